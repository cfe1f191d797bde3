"""The web UI (issue 14): server-rendered pages over the control plane's API, at `/ui`."""

from laneway.ui.app import ui_app

__all__ = ["ui_app"]
