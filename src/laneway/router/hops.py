"""A bounded buffer of hop records, flushed to a sink in batches off the request path.

Recording a hop is an append; a timer (not a task per request) hands the batch to the sink. When
the sink falls behind, the oldest records are dropped: the hot path never waits for bookkeeping.

The collector. Hop records are the router process's long-lived allocation: they pile up in the
sink's log (tens of thousands of them), and CPython's collector runs a full collection each time
the objects that survived grew by a quarter, walking every record each time: a pause of tens of
milliseconds every second or two under load, which was most of the router's p99. Per-request
objects are freed by their reference counts (the hot path makes no cycles), so every flush
moves what survived into the collector's permanent generation (`gc.freeze()`, a constant-time
list splice): collections then only walk the young objects of the last batch. In case a cycle
does get frozen, a full collection runs every `COLLECT_EVERY` seconds, one pause per interval
instead of one per second.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from laneway.core.hops import Hop

__all__ = ["HopRecorder", "HopSink"]

HopSink = Callable[[list[Hop]], None]
log = logging.getLogger(__name__)
COLLECT_EVERY = 600.0  # seconds between full collections (see the module docstring)


class HopRecorder:
    def __init__(self, sink: HopSink | None, capacity: int, interval: float = 0.05) -> None:
        self._sink = sink
        self._capacity = capacity
        self._interval = interval
        self._buffer: list[Hop] = []
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0
        self._collected_at = time.monotonic()

    def record(self, hop: Hop) -> None:
        if self._sink is None:
            return
        buffer = self._buffer
        buffer.append(hop)
        if len(buffer) > self._capacity:
            excess = len(buffer) - self._capacity
            del buffer[:excess]
            self.dropped += excess
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        self._timer = None
        if not self._buffer or self._sink is None:
            return
        batch, self._buffer = self._buffer, []
        try:
            self._sink(batch)
        except Exception:  # a broken sink must not take the data plane down
            log.exception("hop sink failed; %d hop records lost", len(batch))
        now = time.monotonic()
        if now - self._collected_at > COLLECT_EVERY:
            self._collected_at = now
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
