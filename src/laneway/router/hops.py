"""A bounded buffer of hop records, flushed to a sink in batches off the request path.

Recording a hop is an append; a timer (not a task per request) hands the batch to the sink. When
the sink falls behind, the oldest records are dropped: the hot path never waits for bookkeeping.

The collector. CPython runs a full collection each time the objects that survived grew by a
quarter, and each one walks every tracked object: a router process's modules, classes and
settings are tens of thousands of them, a pause of milliseconds every few thousand requests.
`freeze_startup` moves what exists once the process has started into the collector's permanent
generation (what is there is not garbage: it lives as long as the process), so that full
collections walk only what serving makes. Hop records are rows the collector does not track
(`core.hops.HopRow`; untracked as they are recorded where the router's scans are compiled, at
the collector's first pass over them elsewhere). Nothing is frozen later: an object frozen
while it was garbage in a cycle would never be freed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

from laneway.core.hops import HopRow
from laneway.router.scan import untrack

__all__ = ["HopRecorder", "HopSink", "freeze_startup"]

HopSink = Callable[[list[HopRow]], None]  # rows: `core.hops.HopRow`
log = logging.getLogger(__name__)


class HopRecorder:
    def __init__(self, sink: HopSink | None, capacity: int, interval: float = 0.05) -> None:
        self._sink = sink
        self._capacity = capacity
        self._interval = interval
        self._buffer: list[HopRow] = []
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0

    def record(self, hop: HopRow) -> None:
        if self._sink is None:
            return
        buffer = self._buffer
        # Untracked from the start where compiled: the rows waiting for the next flush (a
        # thousand or more under load) were most of what each young collection walked.
        buffer.append(hop if untrack is None else untrack(hop))
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

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()


def freeze_startup() -> None:
    """Called once a router process has started (see the module docstring): collect what
    start-up left as garbage, then freeze the rest."""
    gc.collect()
    gc.freeze()
