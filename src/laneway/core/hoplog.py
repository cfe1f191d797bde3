"""The control plane's bounded log of hops, fed by routers in batches (oldest dropped).

Captured exchanges ride on their hops (`Hop.capture`) but are bounded on their own, because
one is up to two bodies of `capture_body_bytes`: by total size (`capture_max_bytes`, the
bodies counted) and by age (`capture_max_age`). A capture past either bound is dropped from
its hop, oldest first; the hop itself stays.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from laneway.core.hops import Hop

__all__ = ["HopLog"]


def _size(capture: dict[str, Any]) -> int:
    request, response = capture.get("request", {}), capture.get("response", {})
    return 512 + len(request.get("body", "")) + len(response.get("body", ""))


class HopLog:
    def __init__(self, capacity: int, *, capture_max_bytes: int = 64 << 20,
                 capture_max_age: float = 3600.0) -> None:
        self._hops: deque[Hop] = deque(maxlen=capacity)
        self.received = 0
        self.capture_max_bytes = capture_max_bytes
        self.capture_max_age = capture_max_age
        self._captured: deque[tuple[Hop, int]] = deque()  # oldest first, with their sizes
        self._captured_bytes = 0

    def add(self, hops: list[Hop]) -> None:
        self._hops.extend(hops)
        self.received += len(hops)
        for hop in hops:
            if hop.capture is not None:
                size = _size(hop.capture)
                self._captured.append((hop, size))
                self._captured_bytes += size
        if self._captured:
            self._trim_captures()

    def _trim_captures(self) -> None:
        oldest = time.time() - self.capture_max_age
        captured = self._captured
        while captured and (self._captured_bytes > self.capture_max_bytes
                            or captured[0][0].at < oldest):
            hop, size = captured.popleft()
            hop.capture = None
            self._captured_bytes -= size

    def captures(self) -> list[Hop]:
        """The hops that still hold a capture, oldest first (by when they were received)."""
        self._trim_captures()
        return [hop for hop, _ in self._captured if hop.capture is not None]

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

    def trace_ids(self, prefix: str, limit: int = 10) -> list[str]:
        """The trace ids kept that start with `prefix`, newest first (at most `limit`)."""
        found: list[str] = []
        for hop in reversed(self._hops):
            trace = hop.trace_id
            if trace and trace.startswith(prefix) and trace not in found:
                found.append(trace)
                if len(found) >= limit:
                    break
        return found

    def whole_trace_id(self, given: str) -> str:
        """A trace id, or a unique prefix of one (tables show the first 12 characters);
        `given` itself when no kept trace starts with it. ValueError, naming the candidates,
        when several do."""
        if len(given) >= 32:
            return given
        matches = self.trace_ids(given)
        if given in matches:
            return given
        if len(matches) > 1:
            raise ValueError(f"trace: {given!r} is the start of {len(matches)} traces "
                             f"({', '.join(m[:16] + '…' for m in matches[:4])}); give more "
                             "of it")
        return matches[0] if matches else given

    def __len__(self) -> int:
        return len(self._hops)
