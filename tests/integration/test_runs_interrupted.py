"""Runs survive their daemon: real test commands (with a helper that leaves their process group),
a real SQLite store, and a real daemon process killed with SIGKILL while its run runs.

A running run's report is saved with what it has collected so far; a daemon that shuts down ends
its runs `interrupted`; a daemon that starts ends the runs a crashed one left `running` the same
way and stops the commands they left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from laneway.control.api import create_app
from laneway.control.plane import ControlPlane
from laneway.control.runs import RUN_ID_ENV, RunManager, RunSpec
from laneway.control.store import SqliteStore
from laneway.core.feed import RoutesBroadcaster
from laneway.core.hoplog import HopLog
from laneway.core.hops import Hop
from laneway.core.processes import OWNER_ENV, find_marked
from laneway.core.spec import parse_project
from laneway.runtime.memory import MemoryRuntime

PROJECT = {"name": "shop", "services": {"web": {"run": "w", "port": 19401}}}
# Prints its marks, starts a helper in a session of its own (out of reach of a process-group
# kill), then runs until the test creates `stop`.
COMMAND = (
    "setsid sh -c 'while :; do sleep 0.1; done' & "
    f'echo "started {RUN_ID_ENV}=${RUN_ID_ENV} {OWNER_ENV}=${OWNER_ENV}"; '
    'while [ ! -e "$LANEWAY_RUN_DIR/stop" ]; do sleep 0.05; done; echo stopping'
)
ROOT = Path(__file__).resolve().parents[2]


def _control(state: Path) -> ControlPlane:
    state.mkdir(exist_ok=True)
    return ControlPlane(parse_project(PROJECT), SqliteStore(state / "state.db"),
                        MemoryRuntime(), RoutesBroadcaster(), HopLog(1000))


def _hops(control: ControlPlane, key: str, count: int) -> None:
    control.hops.add([Hop(time.time(), f"t{i}", "", "web", key, "sb", "web@sb#1", 200, 1.0,
                          "GET", f"/{i}") for i in range(count)])


def _stored(state: Path, run_id: str) -> dict[str, Any] | None:
    """The report as a reader of the file sees it (not through the writer's connection)."""
    import json

    with sqlite3.connect(state / "state.db") as db:
        row = db.execute("SELECT report FROM runs WHERE id = ?", (run_id,)).fetchone()
    return json.loads(row[0]) if row else None


async def _until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _collected(report: dict[str, Any] | None, hops: int) -> bool:
    return report is not None and report["hops"] == hops and \
        any(line.startswith("started") for line in report["output_tail"])


async def test_a_running_run_is_saved_as_it_goes_and_its_helpers_stop_with_it(
        tmp_path: Path) -> None:
    state = tmp_path / ".laneway"
    control = _control(state)
    view, _ = control.apply_sandbox({"forks": [{"service": "web"}]}, name="sb")
    runs = RunManager(control, state / "runs", progress_every=0.2)
    report = await runs.start(RunSpec(sandbox="sb", command=COMMAND))
    run_id = report["id"]
    _hops(control, view["routingKey"], 3)
    await _until("a progress save", lambda: _collected(_stored(state, run_id), 3))
    running = _stored(state, run_id)
    assert running is not None
    print({k: running[k] for k in ("status", "hops", "forks_reached", "output_bytes")})
    assert (running["status"], running["verdict"]) == ("running", "running")
    assert running["forks_reached"] == {"web@sb": 3}
    assert running["output_bytes"] > 0
    assert f"started {RUN_ID_ENV}={run_id} {OWNER_ENV}={state.resolve()}" in \
        running["output_tail"]
    assert len(find_marked(state, {RUN_ID_ENV: run_id})) >= 2  # the command and its helper
    (state / "runs" / run_id / "stop").touch()
    done = await runs.wait(run_id, 15)
    assert (done["status"], done["verdict"], done["exit_code"]) == ("finished", "passed", 0)
    assert done["hops"] == 3
    assert find_marked(state, {RUN_ID_ENV: run_id}) == [], "the run left its helper running"
    await runs.close()
    control.store.close()


async def test_a_daemon_that_shuts_down_ends_its_run_interrupted(tmp_path: Path) -> None:
    state = tmp_path / ".laneway"
    control = _control(state)
    view, _ = control.apply_sandbox({"forks": [{"service": "web"}]}, name="sb")
    runs = RunManager(control, state / "runs", progress_every=0.2)
    run_id = (await runs.start(RunSpec(sandbox="sb", command=COMMAND)))["id"]
    _hops(control, view["routingKey"], 2)
    await _until("a progress save", lambda: _collected(_stored(state, run_id), 2))
    await runs.close()
    report = _stored(state, run_id)
    assert report is not None
    print({k: report[k] for k in ("status", "verdict", "exit_code", "hops", "note")})
    assert (report["status"], report["verdict"]) == ("interrupted", "interrupted")
    assert report["finished_at"] is not None
    assert report["note"].startswith("the daemon shut down while this run was running")
    assert (report["hops"], report["forks_reached"]) == (2, {"web@sb": 2})
    assert any(line.startswith("started") for line in report["output_tail"])
    assert find_marked(state, {RUN_ID_ENV: run_id}) == []
    control.store.close()


def daemon(state: str) -> None:
    """A control plane with one run in flight, until it is killed (run as its own process)."""

    async def serve() -> None:
        control = _control(Path(state))
        view, _ = control.apply_sandbox({"forks": [{"service": "web"}]}, name="sb")
        runs = RunManager(control, Path(state) / "runs", progress_every=0.2)
        report = await runs.start(RunSpec(sandbox="sb", command=COMMAND))
        _hops(control, view["routingKey"], 2)
        print(report["id"], flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


async def test_a_run_whose_daemon_was_killed_ends_interrupted_at_the_next_start(
        tmp_path: Path) -> None:
    state = tmp_path / ".laneway"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import sys; from tests.integration.test_runs_interrupted import daemon; "
        "daemon(sys.argv[1])", str(state), cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        run_id = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert run_id, "the daemon did not start its run"
        await _until("a progress save", lambda: _collected(_stored(state, run_id), 2))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    left = find_marked(state, {RUN_ID_ENV: run_id})
    print(f"processes the killed daemon's run left: {len(left)}")
    assert len(left) >= 2, "the test command died with its daemon: nothing to prove"
    before = _stored(state, run_id)
    assert before is not None
    assert before["status"] == "running"

    control = _control(state)
    runs = RunManager(control, state / "runs")
    assert runs.interrupted == [run_id]
    report = control.store.get_run(run_id)
    assert report is not None
    print({k: report[k] for k in ("status", "verdict", "exit_code", "hops", "note")})
    assert (report["status"], report["verdict"]) == ("interrupted", "interrupted")
    assert report["finished_at"] is not None
    assert "crashed or was killed" in report["note"]
    # At least the command and its helper, which live throughout; their `sleep` children come
    # and go between the count above and the stop, so the exact count differs either way
    # (CI saw 4 stopped against 3 counted, and 3 against 4).
    stopped = re.search(r"laneway stopped it \((\d+) processes\)", report["note"])
    assert stopped is not None, report["note"]
    assert int(stopped.group(1)) >= 2
    for field in ("hops", "forks_reached", "fork_responses", "output_tail", "output_bytes",
                  "duration_s", "started_at", "command_line"):
        assert report[field] == before[field], field
    assert find_marked(state, {RUN_ID_ENV: run_id}) == []
    # Only once: the next start has nothing left to end.
    assert RunManager(control, state / "runs").interrupted == []
    await runs.close()
    control.store.close()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def test_laneway_run_says_interrupted_and_exits_4(tmp_path: Path) -> None:
    state = tmp_path / ".laneway"
    control = _control(state)
    control.apply_sandbox({"forks": [{"service": "web"}]}, name="sb")
    runs = RunManager(control, state / "runs", progress_every=0.2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(create_app(control, "t0ken", runs=runs),
                                    log_level="warning", lifespan="off"))
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        await _until("the API", lambda: server.started)
        cli = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "laneway"), "run", "--sandbox", "sb",
            "--api", f"http://127.0.0.1:{sock.getsockname()[1]}", "--", "sh", "-c", COMMAND,
            env={**os.environ, "LANEWAY_TOKEN": "t0ken"}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        await _until("the run", lambda: any(
            _collected(r, 0) for r in control.store.runs(None, 10)))
        await runs.close()  # what a daemon's shutdown does
        out, err = await asyncio.wait_for(cli.communicate(), 20)
    finally:
        server.should_exit = True
        await serving
    text = out.decode()
    print(text, err.decode())
    assert cli.returncode == 4
    assert ": interrupted  exit -15 " in text
    assert "note: the daemon shut down while this run was running" in text
    control.store.close()
