"""The data plane process (routers, supervised processes, routes feed, hop buffer): started by
the daemon as `python -m laneway.dataplane`, it outlives it. See `laneway.dataplane.main`."""

from laneway.dataplane.main import DataPlane, main

__all__ = ["DataPlane", "main"]
