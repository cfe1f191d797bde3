"""The local runtime with real subprocesses: health, crash and restart, stop, leftovers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from laneway.core.runtime import ProcessSpec, UnitState
from laneway.runtime.local import LocalRuntime
from laneway.runtime.local.process import reap_leftovers

CHAIN = str(Path(__file__).parents[1] / "apps" / "chain.py")


def spec(unit: str, *, env: dict[str, str] | None = None, health: str = "/healthz",
         argv: tuple[str, ...] | None = None, timeout: float = 10.0) -> ProcessSpec:
    service, _, rest = unit.partition("@")
    return ProcessSpec(unit=unit, service=service, sandbox=rest.partition("#")[0] or None,
                       argv=argv or (sys.executable, CHAIN),
                       env=tuple(sorted({"LANEWAY_SERVICE": service, **(env or {})}.items())),
                       cwd=None, health=health, startup_timeout=timeout)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    rt = LocalRuntime(tmp_path / ".laneway")
    yield rt
    await rt.close()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def phase(rt: LocalRuntime, unit: str) -> UnitState:
    return rt.states()[unit]


async def test_process_gets_port_env_and_becomes_ready(runtime: LocalRuntime) -> None:
    await runtime.start(spec("pricing", env={"VERSION": "v1"}))
    await until(lambda: phase(runtime, "pricing").phase == "ready")
    state = phase(runtime, "pricing")
    assert state.port
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{state.port}/")).json()
    assert body == {"service": "pricing", "version": "v1", "next": None}
    log = runtime.log_path("pricing").read_text()
    assert f"listening on {state.port}" in log


async def test_crash_is_reported_with_log_tail_and_restarted(runtime: LocalRuntime,
                                                             tmp_path: Path) -> None:
    flag = tmp_path / "crash-once"
    flag.write_text("x")
    # Crashes while the flag file exists (and removes it), then runs normally.
    script = (f"import os,sys,runpy; p={str(flag)!r}\n"
              "if os.path.exists(p):\n"
              "    os.remove(p); print('boom: bad config', file=sys.stderr); sys.exit(4)\n"
              f"runpy.run_path({CHAIN!r}, run_name='__main__')")
    await runtime.start(spec("web@sb#1", argv=(sys.executable, "-c", script)))
    await until(lambda: phase(runtime, "web@sb#1").exit_code == 4)
    state = phase(runtime, "web@sb#1")
    assert "exited with code 4" in state.message
    assert "boom: bad config" in state.message
    # While it restarts, it still says why the last run ended (not merely "starting").
    seen: list[str] = []

    def restarted() -> bool:
        now = phase(runtime, "web@sb#1")
        if now.phase == "starting":
            seen.append(now.message)
        return now.phase == "ready"

    await until(restarted)
    assert any(m.startswith("waiting for the health check; last time: exited with code 4")
               for m in seen), seen
    assert phase(runtime, "web@sb#1").restarts == 1
    assert phase(runtime, "web@sb#1").message == "healthy"


async def test_never_healthy_is_unhealthy_with_the_reason(runtime: LocalRuntime) -> None:
    await runtime.start(spec("web", env={"FAIL_HEALTH": "1"}, timeout=0.5))
    await until(lambda: phase(runtime, "web").phase == "unhealthy")
    message = phase(runtime, "web").message
    assert "not healthy after 0.5s" in message
    assert "answered 500" in message


async def test_command_not_found_is_crashed(runtime: LocalRuntime) -> None:
    await runtime.start(spec("web", argv=("/nonexistent/laneway-test-binary",)))
    await until(lambda: phase(runtime, "web").phase == "crashed")
    assert "cannot start" in phase(runtime, "web").message


async def test_stop_kills_the_whole_process_group(runtime: LocalRuntime,
                                                  tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # A shell that starts a child and ignores SIGTERM itself: the group kill still ends both.
    line = (f"trap '' TERM; {sys.executable} {CHAIN} & echo $! > {pidfile}; wait")
    await runtime.start(spec("web", argv=("/bin/sh", "-c", line), health="tcp"))
    await until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    child = int(pidfile.read_text())
    await until(lambda: phase(runtime, "web").phase == "ready")
    await runtime.stop("web")
    assert "web" not in runtime.states()
    await until(lambda: not _alive(child), timeout=8)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split()[2] != "Z"


def test_leftovers_of_a_dead_daemon_are_stopped(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    deadline = time.monotonic() + 5
    while b"sleep" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():  # exec finished
        assert time.monotonic() < deadline
        time.sleep(0.01)
    run = tmp_path / "run"
    run.mkdir()
    (run / "web.json").write_text(json.dumps({"pid": proc.pid, "unit": "web",
                                              "argv": [sys.executable]}))
    (run / "gone.json").write_text(json.dumps({"pid": 999_999_999, "unit": "gone",
                                               "argv": ["x"]}))
    assert reap_leftovers(run) == ["web"]
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert list(run.iterdir()) == []
