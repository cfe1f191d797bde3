"""The hop recorder's batches and its collector policy (`router/hops.py`): what survived a
batch leaves the collector's young generations, and a full collection still runs now and
then, so that a cycle frozen by mistake is not kept for ever."""

from __future__ import annotations

import asyncio
import gc

import pytest

from laneway.core.hops import Hop
from laneway.router import hops as hops_module
from laneway.router.hops import HopRecorder


def hop(n: int) -> Hop:
    return Hop(float(n), "", "", "svc", "", "baseline", "", 200, 1.0, "GET", f"/{n}")


class Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_a_batch_reaches_the_sink_and_its_survivors_are_frozen() -> None:
    got: list[Hop] = []
    recorder = HopRecorder(got.extend, capacity=10, interval=0.01)
    gc.unfreeze()
    for n in range(3):
        recorder.record(hop(n))
    await asyncio.sleep(0.05)
    assert [h.path for h in got] == ["/0", "/1", "/2"]
    assert gc.get_freeze_count() > 0  # the records (and all else alive) left the young gens
    gc.unfreeze()


def test_the_oldest_records_go_when_the_sink_falls_behind() -> None:
    recorder = HopRecorder(lambda batch: None, capacity=2)
    recorder._timer = object()  # type: ignore[assignment]  # no loop: no flush timer
    for n in range(5):
        recorder.record(hop(n))
    assert recorder.dropped == 3
    assert [h.path for h in recorder._buffer] == ["/3", "/4"]


def test_a_full_collection_runs_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = HopRecorder(lambda batch: None, capacity=10)
    recorder._timer = object()  # type: ignore[assignment]
    gc.unfreeze()
    Cycle()  # garbage only a collection can free
    gc.freeze()
    recorder.record(hop(1))
    recorder.flush()
    assert gc.get_freeze_count() > 0
    clock = [recorder._collected_at + hops_module.COLLECT_EVERY + 1]
    monkeypatch.setattr(hops_module.time, "monotonic", lambda: clock[0])
    collected = []
    monkeypatch.setattr(hops_module.gc, "collect", lambda: collected.append(1) or 0)
    recorder._timer = object()  # type: ignore[assignment]
    recorder.record(hop(2))
    recorder.flush()
    assert collected == [1]
    recorder._timer = object()  # type: ignore[assignment]
    recorder.record(hop(3))
    recorder.flush()  # not again before the next interval
    assert collected == [1]
    gc.unfreeze()
