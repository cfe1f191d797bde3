"""A hop whose baggage carried two different `laneway-key` members is marked (`key_conflict`),
and every place that shows hops says so: `laneway hops`, `laneway trace` (table and JSON) and a
run's report (`laneway runs get`: text, Markdown, JSON). The control API is real (loopback, port
0) over the in-memory runtime; the hops are records made here, as a router makes them; the CLI
runs as a user types it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from laneway.control.api import create_app
from laneway.control.plane import ControlPlane
from laneway.control.runs import RunManager, RunSpec
from laneway.control.store import MemoryStore
from laneway.core.feed import RoutesBroadcaster
from laneway.core.hoplog import HopLog
from laneway.core.hops import Hop
from laneway.core.spec import parse_project
from laneway.runtime.memory import MemoryRuntime

PROJECT = parse_project({"name": "shop", "services": {
    "web": {"run": "w", "port": 19401}, "currency": {"run": "c", "port": 19402}}})
TOKEN = "test-token"
LANEWAY = str(Path(sys.executable).parent / "laneway")
OTHER = "other0000000"
NOTE = ("carried two different laneway-key members; the router used the last one, as "
        "OpenTelemetry does")
# Until the test creates `stop`: the hops are recorded while the run runs.
COMMAND = 'while [ ! -e "$LANEWAY_RUN_DIR/stop" ]; do sleep 0.05; done'


@dataclass
class Env:
    url: str
    control: ControlPlane
    runs: RunManager
    key: str


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    control = ControlPlane(PROJECT, MemoryStore(), MemoryRuntime(), RoutesBroadcaster(),
                           HopLog(1000))
    view, _ = control.apply_sandbox({"forks": [{"service": "web"}]}, name="sb")
    runs = RunManager(control, tmp_path / "runs", progress_every=0.2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(create_app(control, TOKEN, runs=runs),
                                    log_level="warning", lifespan="off"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield Env(f"http://127.0.0.1:{sock.getsockname()[1]}", control, runs, view["routingKey"])
    await runs.close()
    server.should_exit = True
    await task


async def laneway(env: Env, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        LANEWAY, *args, "--api", env.url, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "LANEWAY_TOKEN": TOKEN})
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def _trace(env: Env, trace_id: str, conflicts: tuple[bool, bool]) -> None:
    now = time.time()
    env.control.hops.add([
        Hop(now, trace_id, "", "web", env.key, "sb", "web@sb#1", 200, 5.0, "GET", "/",
            key_conflict=conflicts[0]),
        Hop(now + 0.001, trace_id, "", "currency", OTHER, "baseline", "", 200, 1.0, "GET",
            "/c", key_conflict=conflicts[1]),
    ])


async def test_hops_and_trace_mark_the_hop_with_conflicting_keys(env: Env) -> None:
    _trace(env, "a" * 32, (False, True))
    hops = await laneway(env, "hops", "--trace", "a" * 32)
    assert "currency * " in hops
    assert "web@sb *" not in hops
    assert f"* 1 hop {NOTE}." in hops
    trace = await laneway(env, "trace", "a" * 32)
    assert f"{OTHER} *" in trace
    assert f"{env.key} *" not in trace
    assert f"* 1 hop {NOTE}." in trace
    as_json = json.loads(await laneway(env, "trace", "a" * 32, "-o", "json"))
    assert [h["key_conflict"] for h in as_json["hops"]] == [False, True]
    listed = json.loads(await laneway(env, "hops", "--sandbox", "sb", "-o", "json"))
    assert [h["key_conflict"] for h in listed] == [False]


async def test_hops_without_a_conflict_say_nothing_of_it(env: Env) -> None:
    _trace(env, "b" * 32, (False, False))
    assert "laneway-key" not in await laneway(env, "hops", "--trace", "b" * 32)
    assert "laneway-key" not in await laneway(env, "trace", "b" * 32)


async def test_a_runs_report_says_how_many_hops_carried_two_keys(env: Env) -> None:
    report = await env.runs.start(RunSpec(sandbox="sb", command=COMMAND))
    run_id = report["id"]
    _trace(env, "c" * 32, (True, True))  # both in the run's trace
    _trace(env, "d" * 32, (False, False))
    # Another trace, never with the run's key: not the run's.
    env.control.hops.add([Hop(time.time(), "e" * 32, "", "web", OTHER, "baseline", "", 200,
                              1.0, "GET", "/", key_conflict=True)])
    (env.runs.runs_dir / run_id / "stop").touch()
    done = await env.runs.wait(run_id, 15)
    assert (done["verdict"], done["hops"], done["key_conflicts"]) == ("passed", 2, 2)
    text = await laneway(env, "runs", "get", run_id)
    assert f"note: 2 hops {NOTE}." in text
    markdown = await laneway(env, "runs", "get", run_id, "-o", "md")
    assert f"> 2 hops {NOTE}." in markdown
    as_json = json.loads(await laneway(env, "runs", "get", run_id, "-o", "json"))
    assert as_json["key_conflicts"] == 2
