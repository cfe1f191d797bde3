"""The control plane's bounded log of hops, fed by routers in batches (oldest dropped)."""

from __future__ import annotations

from collections import deque

from laneway.core.hops import Hop

__all__ = ["HopLog"]


class HopLog:
    def __init__(self, capacity: int) -> None:
        self._hops: deque[Hop] = deque(maxlen=capacity)
        self.received = 0

    def add(self, hops: list[Hop]) -> None:
        self._hops.extend(hops)
        self.received += len(hops)

    def query(self, *, routing_keys: set[str] | None = None, destination: str | None = None,
              trace_id: str | None = None, since: float | None = None,
              limit: int = 200) -> list[Hop]:
        """The newest `limit` hops that match, oldest first."""
        out: list[Hop] = []
        for hop in reversed(self._hops):
            if since is not None and hop.at < since:
                break
            if trace_id is not None and hop.trace_id != trace_id:
                continue
            if routing_keys is not None or destination is not None:
                by_key = routing_keys is not None and hop.routing_key in routing_keys
                by_dest = destination is not None and hop.destination == destination
                if not (by_key or by_dest):
                    continue
            out.append(hop)
            if len(out) >= limit:
                break
        # Recorded when they end; shown in the order they started (a path reads outside-in).
        out.sort(key=lambda hop: hop.at)
        return out

    def __len__(self) -> int:
        return len(self._hops)
