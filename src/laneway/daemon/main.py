"""Composition root of the control plane: builds the store, the control plane, the reconciler,
runs and the API over the data plane (`laneway.dataplane`, its own process: routers and service
processes, which keep serving while this process is stopped, stalled or killed), runs them, and
shuts them down as a runbook (stop the API, the reconciler and runs, then the data plane).

Signals: the first SIGINT/SIGTERM starts a graceful shutdown; a second one forces it (process
groups are killed and the daemon exits at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import IO

import uvicorn
import uvloop

from laneway.control.api import create_app
from laneway.control.errors import StoreUnavailable
from laneway.control.plane import ControlPlane
from laneway.control.reconciler import Reconciler
from laneway.control.resources import ResourceManager
from laneway.control.runs import RunManager
from laneway.control.store import SqliteStore, StoreCorrupt
from laneway.core.feed import RoutesBroadcaster
from laneway.core.hoplog import HopLog
from laneway.core.keys import new_api_token
from laneway.core.layout import (
    STATE_DIR_NAME,
    StateLayout,
    make_private,
    restrict_umask,
    write_private,
)
from laneway.core.logs import keep_rotated
from laneway.core.spec import ProjectSpec, SpecError, load_project
from laneway.plugins import builtin_plugins
from laneway.runtime.local.dataplane import DataPlaneError, DataPlaneRuntime
from laneway.ui import ui_app

__all__ = ["Daemon", "main", "run"]

log = logging.getLogger("laneway.daemon")


class DaemonError(Exception):
    """A reason the daemon cannot start that the user can fix."""


class _ApiServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon owns signal handling


class Daemon:
    def __init__(self, config: Path, project: ProjectSpec, out: IO[str]) -> None:
        self.config = config
        self.project = project
        self.out = out
        self.layout = StateLayout(config.parent / STATE_DIR_NAME)
        self.stop_requested = asyncio.Event()
        self._signals = 0
        self._lock_fd: int | None = None

    def say(self, message: str) -> None:
        with contextlib.suppress(OSError):  # daemon.log on a full disk: say nothing, go on
            print(message, file=self.out, flush=True)

    def _lock(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            pid = self.layout.lock.read_text().strip() or "?"
            raise DaemonError(
                f"laneway is already running for {self.config} (pid {pid}); run `laneway down` "
                "first, or `laneway status` to see it"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _write_token(self) -> str:
        token = new_api_token(32)
        write_private(self.layout.token, token)
        return token

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            self.say("laneway: stopping (Ctrl-C again to force)")
            self.stop_requested.set()
        else:
            self.say("laneway: forced stop")
            self._force()

    def _force(self) -> None:
        """A second Ctrl-C: everything of this environment is killed at once."""
        from laneway.core.processes import find_marked

        for pid in find_marked(self.layout.root):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.layout.api.unlink()
        os._exit(130)

    async def run(self) -> int:
        self._lock()
        # The store first: a corrupt one is reported before anything is started.
        store = SqliteStore(self.layout.database)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        token = self._write_token()
        routes_token = new_api_token(24)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.project.ports.api or 0))
        except OSError as exc:
            sock.close()
            raise DaemonError(f"ports.api: cannot listen on 127.0.0.1:{self.project.ports.api}"
                              f" ({exc.strerror or exc}); stop what holds it or choose "
                              "another ports.api in laneway.yaml") from exc
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        settings = self.project.router
        hops = HopLog(settings.hop_capacity, capture_max_bytes=settings.capture_max_bytes,
                      capture_max_age=settings.capture_max_age)
        # The data plane (routers and processes) is its own process and outlives this one:
        # adopt the one that runs (this daemon was restarted, or had crashed), or start it.
        internal = self.project.ports.internal_range()
        runtime = DataPlaneRuntime(self.layout.root, {
            **settings.dataplane(), **({"internal_ports": list(internal)} if internal else {})},
                                   settings.drain_timeout, hop_sink=hops.add)
        feed = RoutesBroadcaster()
        control = ControlPlane(self.project, store, runtime, feed, hops)
        control.load_project = lambda: load_project(self.config)  # `laneway reload`
        control.resources = ResourceManager(builtin_plugins(), self.layout.root / "resources",
                                            self.config.parent, store, control.wake)
        reconciler = Reconciler(control)
        # Runs a crashed daemon left `running` end once the data plane's hops are read.
        runs = RunManager(control, self.layout.root / "runs", end_interrupted=False)
        server: _ApiServer | None = None
        api_task: asyncio.Task[None] | None = None
        rotate_task = loop.create_task(keep_rotated(self.layout.daemon_log),
                                       name="laneway-log-rotate")
        try:
            try:
                await runtime.connect()
                await runtime.listen(*self.project.listeners())
                control.preview_port = runtime.preview_port
            except DataPlaneError as exc:
                raise DaemonError(str(exc)) from exc
            await runtime.sync_hops()
            runs.interrupted = runs.end_interrupted()
            if runtime.adopted:
                running = len(runtime.states())
                self.say(f"laneway: adopted the running data plane (pid {runtime.pid}, "
                         f"{running} processes)")
            reconciler.start()
            app = create_app(control, token, shutdown=self.stop_requested.set, runs=runs,
                             routes_token=routes_token)
            # The web UI: a client of this API (over loopback HTTP), served beside it.
            app.mount("/ui", ui_app(url))
            server = _ApiServer(uvicorn.Config(app, log_level="warning", lifespan="off",
                                               access_log=False, timeout_graceful_shutdown=2))
            api_task = loop.create_task(server.serve(sockets=[sock]), name="laneway-api")
            while not server.started:
                if api_task.done():
                    raise DaemonError("the API server failed to start")
                await asyncio.sleep(0.01)
            write_private(self.layout.api, json.dumps({
                "url": url, "pid": os.getpid(), "config": str(self.config),
                "project": self.project.name, "startedAt": time.time(),
                "dataplanePid": runtime.pid,
            }))
            self.say(f"laneway: {self.project.name} control plane at {url}")
            if control.preview_port is not None:
                self.say(f"laneway: previews at http://<sandbox>--<service>.localhost:"
                         f"{control.preview_port}/")
            await self._report_baseline(control)
            await self.stop_requested.wait()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.layout.api.unlink()
            # Runs first, while the API still answers: a `laneway run` waiting on its run gets
            # the `interrupted` report, not a cut connection.
            await runs.close()
            if server is not None and api_task is not None:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(api_task, 5)
            await reconciler.close()
            await control.resources.close()
            # Asked to stop (`laneway down`, Ctrl-C): the data plane stops too. Failing instead:
            # a data plane this start made goes, one that was already serving keeps serving.
            if self.stop_requested.is_set() or not runtime.adopted:
                await runtime.close()
            else:
                await runtime.detach()
            rotate_task.cancel()
            store.close()
            self.say("laneway: stopped")
        return 0

    async def _report_baseline(self, control: ControlPlane) -> None:
        """Print each baseline service as it becomes ready (or fails) in the foreground log."""
        reported: dict[str, str] = {}
        deadline = time.monotonic() + max(
            (s.startup_timeout for s in self.project.services.values()), default=30
        ) * len(self.project.services) + 5
        while not self.stop_requested.is_set() and time.monotonic() < deadline:
            for svc in control.services():
                phase = svc["phase"]
                if reported.get(svc["name"]) != phase and phase in ("ready", "crashed",
                                                                     "unhealthy"):
                    reported[svc["name"]] = phase
                    note = "" if phase == "ready" else f": {svc['message']}"
                    self.say(f"laneway: {svc['name']} {phase} at {svc['url']}{note}")
            if all(reported.get(s) == "ready" for s in self.project.services):
                self.say("laneway: baseline ready")
                return
            await control.next_pass(0.5)


async def run(config: Path, out: IO[str]) -> int:
    try:
        project = load_project(config)
    except SpecError as exc:
        print(f"Error: {exc.render()}", file=sys.stderr)
        return 2
    daemon = Daemon(config, project, out)
    try:
        return await daemon.run()
    except (DaemonError, StoreCorrupt, StoreUnavailable) as exc:
        # The store is opened inside Daemon.run(); a damaged or unwritable one is the user's
        # to fix (the message says how), so it gets one line, not a traceback.
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    # First, before anything writes to .laneway/: the store, its -wal/-shm, logs, run reports
    # and the token are then created 0600 (folders 0700), whoever creates them later.
    restrict_umask()
    parser = argparse.ArgumentParser(prog="laneway-daemon")
    parser.add_argument("-f", "--file", default="laneway.yaml")
    args = parser.parse_args(argv)
    config = Path(args.file).resolve()
    if config.is_file():  # else `run` says so, and no folder is made beside a missing file
        for path in make_private(config.parent / STATE_DIR_NAME):
            print(f"laneway: warning: {path} belongs to another user and stays readable to "
                  "others", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING, format="laneway: %(levelname)s %(message)s")
    _use_our_python()
    return uvloop.run(run(config, sys.stdout))


def _use_our_python() -> None:
    """Put this interpreter's bin/ first on PATH for the processes we start, as activating the
    virtual environment would: `run: python app.py` then means the Python laneway runs in."""
    if sys.prefix != sys.base_prefix:
        bin_dir = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "")
        if not path.startswith(bin_dir + os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + path
