"""The local runtime: baseline services and forks as supervised processes on this machine."""

from laneway.runtime.local.runtime import LocalRuntime

__all__ = ["LocalRuntime"]
