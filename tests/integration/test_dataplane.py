"""The data plane's pieces on real sockets and processes: drains, the hop buffer, supervision
that survives its own bugs, bounded logs, and a data plane process adopted by a second client."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from laneway.core.hops import ROW_FIELDS, Hop, HopRow
from laneway.core.processes import alive
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.core.runtime import ProcessSpec
from laneway.dataplane.main import HopBuffer
from laneway.router import Router, RouterSettings
from laneway.runtime.local import LocalRuntime
from laneway.runtime.local import process as process_module
from laneway.runtime.local.dataplane import DataPlaneError, DataPlaneRuntime
from laneway.runtime.local.process import copy_output, free_port
from tests.integration.test_local_runtime import until
from tests.upstreams import TestUpstream

CHAIN = str(Path(__file__).parents[1] / "apps" / "chain.py")
KEY = "abc123def456"


def hop(n: int) -> HopRow:
    """A record as routers hand it to the buffer: a row."""
    return Hop(float(n), "", "", "web", "", "baseline", "", 200, 1.0, "GET", f"/{n}").to_row()


def _paths(rows: list[tuple[Any, ...]]) -> list[str]:
    return [Hop.from_row(ROW_FIELDS, row).path for row in rows]


def test_hop_buffer_hands_over_what_is_new_and_counts_what_it_dropped() -> None:
    buffer = HopBuffer(capacity=3)
    assert buffer.after(0) == ([], 0, 0)
    buffer.add([hop(1), hop(2)])
    found, last, dropped = buffer.after(0)
    assert (_paths(found), last, dropped) == (["/1", "/2"], 2, 0)
    assert buffer.after(2) == ([], 2, 0)
    buffer.add([hop(3), hop(4), hop(5)])  # capacity 3: /1 and /2 are gone
    found, last, dropped = buffer.after(1)
    assert (_paths(found), last, dropped) == (["/3", "/4", "/5"], 5, 1)
    found, last, dropped = buffer.after(4)
    assert (_paths(found), last, dropped) == (["/5"], 5, 0)
    found, last, dropped = buffer.after(2, limit=2)  # the oldest first when over the limit
    assert (_paths(found), last, dropped) == (["/3", "/4"], 4, 0)


async def test_hop_buffer_frees_what_is_over_its_capacity_a_little_at_a_turn() -> None:
    """Freeing a flush's worth of old records at once stalled the router for a quarter of a
    millisecond: in a running loop they go `TRIM` a turn, and what the buffer hands over is
    the newest `capacity` meanwhile as after."""
    buffer = HopBuffer(capacity=100)
    buffer.add([hop(n) for n in range(1, 101)])
    buffer.add([hop(n) for n in range(101, 101 + 3 * HopBuffer.TRIM)])
    assert 100 < len(buffer._rows) <= 100 + 2 * HopBuffer.TRIM  # one turn's worth freed
    found, last, dropped = buffer.after(0, limit=1000)
    assert last == buffer.seq == 100 + 3 * HopBuffer.TRIM
    assert _paths(found)[-1] == f"/{buffer.seq}"
    assert dropped == buffer.seq - len(found)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(buffer._rows) == 100
    found, last, dropped = buffer.after(0, limit=1000)
    assert (_paths(found)[0], len(found), dropped) == (f"/{buffer.seq - 99}", 100,
                                                        buffer.seq - 100)


def test_hop_buffer_rows_are_not_walked_by_the_collector() -> None:
    """Kept records are rows the collector stops tracking after one pass: a full collection
    does not walk the buffer (it was most of the router's p99 under load). A captured
    record's row holds a dict, and stays tracked."""
    buffer = HopBuffer(capacity=1000)
    capture = {"request": {"method": "GET"}}
    captured = (*hop(0)[:-1], capture)
    buffer.add([hop(n) for n in range(1, 1000)] + [captured])
    gc.collect(0)
    rows, _, _ = buffer.after(0)
    assert Hop.from_row(ROW_FIELDS, rows[-1]).capture == capture
    assert [row for row in rows if gc.is_tracked(row)] == [rows[-1]]


async def test_a_drain_waits_for_the_requests_in_flight_then_closes_idle_connections(
        upstream: TestUpstream, fork_upstream: TestUpstream) -> None:
    router = Router(RouterSettings())
    port = await router.listen("pricing", 0)
    fork = Upstream("127.0.0.1", fork_upstream.port)
    table = RouteTable(version=1, baseline={"pricing": Upstream("127.0.0.1", upstream.port)},
                       forks={"pricing": {KEY: ForkRoute("pricing", "sb", fork, True,
                                                         fork="pricing@sb#1")}})
    router.apply(table)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            headers = {"baggage": f"laneway-key={KEY}"}
            slow = asyncio.ensure_future(client.get("/slow?ms=600", headers=headers))
            await until(lambda: router.pool.busy(fork) == 1)
            # The route goes away; the request already given to the fork is still counted.
            router.apply(RouteTable(version=2, baseline=table.baseline, forks={"pricing": {}}))
            started = time.monotonic()
            left = await router.pool.drained(fork, timeout=5)
            assert left == 0
            assert time.monotonic() - started > 0.3  # it did wait for the slow answer
            answer = await slow
            assert answer.status_code == 200
            assert answer.headers["laneway-served-by"] == "pricing@sb"
            assert router.pool.take(fork) is None  # no idle connection to the old fork left
            # A drain with nothing in flight returns at once; a stuck one gives up in time.
            assert await router.pool.drained(fork, timeout=5) == 0
            router.apply(table)
            stuck = asyncio.ensure_future(client.get("/slow?ms=1500", headers=headers))
            await until(lambda: router.pool.busy(fork) == 1)
            assert await router.pool.drained(fork, timeout=0.2) == 1
            assert (await stuck).status_code == 200
    finally:
        await router.close()


def spec(unit: str) -> ProcessSpec:
    return ProcessSpec(unit=unit, service=unit, sandbox=None, argv=(sys.executable, CHAIN),
                       env=(("LANEWAY_SERVICE", unit),), cwd=None, health="/healthz",
                       startup_timeout=10.0)


async def test_supervision_survives_an_unexpected_exception(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = process_module.check_health
    calls = {"n": 0}

    async def flaky(port: int, health: str, timeout: float = 1.0) -> str | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("a bug in laneway")
        return await real(port, health, timeout)

    monkeypatch.setattr(process_module, "check_health", flaky)
    runtime = LocalRuntime(tmp_path / ".laneway")
    try:
        await runtime.start(spec("web"))
        await until(lambda: runtime.states()["web"].errors == 1)
        assert "laneway could not supervise it (ValueError: a bug in laneway)" in \
            runtime.states()["web"].message
        # Restarted with backoff, and ready; the process of the failed attempt is gone.
        await until(lambda: runtime.states()["web"].phase == "ready")
        assert runtime.states()["web"].restarts == 1
        state = runtime.states()["web"]
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{state.port}/healthz")).status_code \
                == 200
        await runtime.stop("web")
        assert runtime.states() == {}
    finally:
        await runtime.close()


async def test_a_unit_log_is_rotated_past_its_bound(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys\nfor i in range(4000): print('line', i)",
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    path = tmp_path / "web.log"
    await copy_output(proc.stdout, path, max_bytes=20_000)
    await proc.wait()
    older = path.with_name("web.log.1")
    assert older.exists()
    assert older.stat().st_size < 20_000 + 70_000  # one read's worth past the bound at most
    assert path.stat().st_size < 20_000 + 70_000
    assert path.read_text().splitlines()[-1].endswith("line 3999")
    assert not path.with_name("web.log.2").exists()


async def test_a_second_client_adopts_the_running_data_plane(tmp_path: Path) -> None:
    state_dir = tmp_path / ".laneway"
    first = DataPlaneRuntime(state_dir, {}, drain_timeout=5)
    await first.connect()
    assert not first.adopted
    try:
        await first.start(spec("web"))
        await until(lambda: first.states().get("web") is not None
                    and first.states()["web"].phase == "ready")
        pid = first.states()["web"].pid
        await first.detach()  # as a killed daemon would: the data plane keeps running
        second = DataPlaneRuntime(state_dir, {}, drain_timeout=5)
        await second.connect()
        assert second.adopted
        assert second.pid == first.pid
        assert second.states()["web"].pid == pid  # the same process, not a restart
        await second.stop("web")
        assert "web" not in second.states()
        await second.close()
        assert not second._alive()
    finally:
        await first.detach()
        if first._proc is not None:  # it was this test's child: collect it
            first._proc.wait(timeout=30)


async def test_when_a_shell_dies_its_child_does_not_outlive_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    line = f"{sys.executable} {CHAIN} & echo $! > {pidfile}; wait"
    runtime = LocalRuntime(tmp_path / ".laneway")
    try:
        await runtime.start(ProcessSpec(
            unit="web", service="web", sandbox=None, argv=("/bin/sh", "-c", line),
            env=(("LANEWAY_SERVICE", "web"),), cwd=None, health="/healthz",
            startup_timeout=10.0))
        await until(lambda: runtime.states()["web"].phase == "ready")
        child = int(pidfile.read_text())
        shell = runtime.states()["web"].pid
        assert shell is not None
        os.kill(shell, signal.SIGKILL)
        # The child goes with its shell, then the unit comes back as a whole (a new child).
        await until(lambda: not alive(child))
        await until(lambda: runtime.states()["web"].phase == "ready"
                    and runtime.states()["web"].pid != shell)
        assert "killed by signal 9" in runtime.states()["web"].last_failure
        assert int(pidfile.read_text()) != child
    finally:
        await runtime.close()


async def test_hops_are_handed_over_once_however_they_are_read(tmp_path: Path,
                                                                  upstream: TestUpstream) -> None:
    hops: list[Hop] = []
    runtime = DataPlaneRuntime(tmp_path / ".laneway", {}, drain_timeout=5, hop_sink=hops.extend)
    await runtime.connect()
    try:
        port = free_port()
        await runtime.listen({"web": port})
        await runtime.publish_routes(RouteTable(
            version=1, baseline={"web": Upstream("127.0.0.1", upstream.port)},
            forks={"web": {}}))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for round_ in range(5):
                for i in range(20):
                    assert (await client.get(f"/r{round_}-{i}")).status_code == 200
                # A run's report reads everything now, while the long poll reads too.
                await asyncio.gather(runtime.sync_hops(), runtime.sync_hops())
        # The router hands its records over every 50 ms: wait for all of them, read again.
        await until(lambda: len(hops) >= 100)
        await asyncio.gather(runtime.sync_hops(), runtime.sync_hops())
        paths = [h.path for h in hops]
        assert len(paths) == 100
        assert len(set(paths)) == 100
    finally:
        await runtime.close()


async def test_listeners_reach_each_service_by_its_declared_protocol(tmp_path: Path) -> None:
    runtime = DataPlaneRuntime(tmp_path / ".laneway", {}, drain_timeout=5)
    await runtime.connect()
    try:
        web, pricing = free_port(), free_port()
        await runtime.listen({"web": web, "pricing": pricing}, {"pricing": "grpc"})
        state = await runtime._call("GET", "/v1/state")
        assert state["listeners"] == {"web": web, "pricing": pricing}
        assert state["protocols"] == {"web": "http", "pricing": "grpc"}
        # The same port, another protocol (laneway.yaml changed): the listener follows.
        await runtime.listen({"web": web, "pricing": pricing}, {"web": "h2c"})
        state = await runtime._call("GET", "/v1/state")
        assert state["protocols"] == {"web": "h2c", "pricing": "http"}
        # A daemon that predates `protocols` sends only the ports: HTTP/1.1 for all.
        answer = await runtime._call("PUT", "/v1/listeners", json={"services": {"web": web}})
        assert answer == {"listeners": {"web": web}, "protocols": {"web": "http"},
                          "preview": None}
        # The preview edge: a taken default port gives way; asked again (a restarted daemon),
        # the edge stays where it is; without `preview` it stops.
        await runtime.listen({"web": web}, preview=(web, True))
        edge = runtime.preview_port
        assert edge is not None
        assert edge != web
        await runtime.listen({"web": web}, preview=(web, True))
        assert runtime.preview_port == edge
        assert (await runtime._call("GET", "/v1/state"))["preview"] == edge
        await runtime.listen({"web": web})
        assert runtime.preview_port is None
        with pytest.raises(DataPlaneError, match=r"protocols.web: 'h3' is not one of http, "
                                                 r"h2c, grpc"):
            await runtime.listen({"web": web}, {"web": "h3"})
        async with httpx.AsyncClient() as client:  # the listener still serves
            assert (await client.get(f"http://127.0.0.1:{web}/")).status_code == 503
    finally:
        await runtime.close()


def test_hops_arrive_as_rows_and_an_older_data_planes_objects_are_read_too(
        tmp_path: Path) -> None:
    """This version's data plane answers rows (half the encoding cost on the routers' loop);
    a data plane left running by an older version answers objects: both are taken."""
    from laneway.core.hops import ROW_FIELDS, Hop
    from laneway.runtime.local.dataplane import DataPlaneRuntime

    got: list[Hop] = []
    runtime = DataPlaneRuntime(tmp_path / ".laneway", {}, 1.0, hop_sink=got.extend)
    hop = Hop(at=1.0, trace_id="t", parent_id="", service="c", routing_key="k",
              destination="sb", fork="c@sb#1", status=200, duration_ms=1.0, method="GET",
              path="/x", caller="web")
    assert runtime._take_hops(0, {"seq": 1, "dropped": 0, "fields": list(ROW_FIELDS),
                                  "rows": [hop.to_row()]})
    assert runtime._take_hops(1, {"seq": 2, "dropped": 0, "hops": [hop.to_json()]})
    assert got == [hop, hop]
