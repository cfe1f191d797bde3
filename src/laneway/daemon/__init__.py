"""The local daemon: control plane, router and local runtime wired into one process.

`laneway up` starts it as `python -m laneway.daemon -f laneway.yaml`; the CLI never imports it.
"""

from laneway.daemon.main import Daemon, run

__all__ = ["Daemon", "run"]
