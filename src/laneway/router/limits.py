"""How many client connections the router takes, so that it stays healthy when they pile up.

Two bounds: `max_connections` per listener (configured), and a process-wide one derived from
the file-descriptor limit. Each client connection may hold an upstream connection too, so the
process-wide bound is half of what is left of RLIMIT_NOFILE after a reserve for the router's own
needs (listeners, the routes feed, supervised processes' pipes, log files). A connection beyond
either bound is answered `503` with `connection: close` at once, instead of the kernel refusing
new clients with EMFILE (HAProxy's `maxconn` queues instead; a router in front of a developer's
services should rather say why).
"""

from __future__ import annotations

import resource

__all__ = ["ConnectionBudget", "raise_fd_limit"]

FD_RESERVE = 64


def raise_fd_limit(wanted: int = 1 << 20) -> int:
    """Lift the soft RLIMIT_NOFILE towards the hard limit (as nginx's worker_rlimit_nofile and
    HAProxy do at start); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class ConnectionBudget:
    """Client connections open in this process, against the fd-derived bound."""

    __slots__ = ("open", "process_cap")

    def __init__(self) -> None:
        self.open = 0
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            self.process_cap = 1 << 30
        else:
            self.process_cap = max(8, (soft - FD_RESERVE) // 2)

    def refusal(self, listener_open: int, listener_max: int) -> str | None:
        """Why one more client connection cannot be taken, or None if it can."""
        if listener_open >= listener_max:
            return (f"this service's listener holds {listener_open} connections, its limit "
                    f"(router.max_connections); close idle connections or raise the limit")
        if self.open >= self.process_cap:
            return (f"the router holds {self.open} client connections, as many as its file "
                    f"descriptor limit allows (RLIMIT_NOFILE); raise `ulimit -n` or close "
                    "idle connections")
        return None
