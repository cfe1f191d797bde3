"""The data plane: one listener per service port that reads the routing key and picks the fork
or the baseline, proxies HTTP/1.1 (keep-alive, streaming, upgrades), and records every hop.

It depends only on `laneway.core` (the routes feed and the routing decision), never on the
control plane, and keeps serving its last table when the feed goes quiet.
"""

from laneway.router.server import Router, RouterSettings

__all__ = ["Router", "RouterSettings"]
