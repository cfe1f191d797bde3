"""The data plane process: the routers, the supervised service processes, the routes feed that
processes read, and a buffer of hop records; everything that traffic needs, nothing else.

The daemon (control plane: API, store, reconciler, runs) starts it once per environment and
talks to it over loopback HTTP with a token kept in `.laneway/dataplane.json` (mode 0600; a Unix
socket path under a deep project folder can pass the kernel's 108-byte limit); the processes it
starts read the routes feed there with a read-only token (`laneway.dataplane.api`). It is not the
daemon's
child in any way that matters: it has its own session, its children die with *it* (not with the
daemon), and it keeps serving its last routes table while the daemon is stopped, stalled, killed
or restarting. A restarted daemon adopts what runs here. Like Envoy without istiod, or pods
without the kubelet.

Its own lifetime: it runs until asked to shut down (`POST /v1/shutdown`, SIGTERM, SIGINT), then
stops accepting, stops every unit gracefully and exits. `laneway down` asks for that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from laneway.core.feed import RoutesBroadcaster
from laneway.core.hops import HopRow
from laneway.core.keys import new_api_token
from laneway.core.layout import StateLayout, make_private, restrict_umask, write_private
from laneway.core.logs import keep_rotated
from laneway.core.routes import RouteTable, Upstream
from laneway.core.runtime import UnitState
from laneway.core.spec import LOCAL_HOST
from laneway.router import Router, RouterSettings
from laneway.router.hops import freeze_startup
from laneway.router.limits import raise_fd_limit
from laneway.router.server import RouterError
from laneway.runtime.local import LocalRuntime

__all__ = ["DataPlane", "HopBuffer", "main"]

log = logging.getLogger("laneway.dataplane")


class HopBuffer:
    """Hop records numbered in arrival order, the newest `capacity` kept (a flush's worth more
    for a few turns of the event loop, while the oldest are freed); the daemon reads the
    ones after the last number it has, so records made while it was away are not lost.

    They are kept as the routers make them, rows (`core.hops.HopRow`: tuples of strings and
    numbers), which CPython's collector stops tracking at its first pass over them. As objects,
    the records were most of what a full collection walked (CPython runs one each time the
    surviving objects grew by a quarter): a pause of tens of milliseconds every few seconds
    under load, which was most of the router's p99 (bench/RESULTS.md, issue 17). Rows are also
    what the daemon is sent."""

    # Records freed per turn of the event loop once the buffer is over its capacity.
    TRIM = 256

    def __init__(self, capacity: int) -> None:
        self._rows: deque[HopRow] = deque()
        self._capacity = capacity
        self._trimming = False
        self.seq = 0  # the number of the newest record; the oldest kept is seq - len + 1
        self._changed = asyncio.Event()

    def add(self, rows: list[HopRow]) -> None:
        self._rows.extend(rows)
        self.seq += len(rows)
        self._changed.set()
        self._changed = asyncio.Event()
        if len(self._rows) > self._capacity and not self._trimming:
            self._trim()

    def _trim(self) -> None:
        """Free the oldest records over the capacity, `TRIM` a turn of the loop: a batch of a
        few thousand freed at once (as a bounded deque does in `extend`) was a quarter of a
        millisecond in which the router answered no one, most of its p99 under load."""
        rows = self._rows
        for _ in range(min(len(rows) - self._capacity, self.TRIM)):
            rows.popleft()
        self._trimming = len(rows) > self._capacity
        if self._trimming:
            try:
                asyncio.get_running_loop().call_soon(self._trim)
            except RuntimeError:  # no loop (a test, or the end): all at once
                while len(rows) > self._capacity:
                    rows.popleft()
                self._trimming = False

    def after(self, since: int, limit: int = 20_000) -> tuple[list[HopRow], int, int]:
        """(rows numbered after `since`, the number of the last one, how many were dropped)."""
        rows = self._rows
        if not rows or since >= self.seq:
            return [], self.seq, 0
        first = self.seq - len(rows) + 1
        dropped = max(0, first - since - 1)
        start = max(0, since + 1 - first)
        # Walked from the end that is nearer: a reader that keeps up asks for the newest few,
        # and copying the whole buffer (up to `hop_capacity` records) for them would cost a
        # long poll answer more than the records it carries.
        newer = len(rows) - start
        if newer <= limit:
            picked = list(itertools.islice(reversed(rows), newer))[::-1]
        else:
            picked = list(itertools.islice(rows, start, start + limit))
        return picked, since + dropped + len(picked), dropped

    async def wait(self, since: int, timeout: float) -> None:
        if since >= self.seq:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)


class DataPlane:
    def __init__(self, layout: StateLayout, settings: RouterSettings, raw_settings: dict[str, Any],
                 drain_timeout: float) -> None:
        self.layout = layout
        self.settings = settings
        self.raw_settings = raw_settings
        self.drain_timeout = drain_timeout
        self.hops = HopBuffer(settings.hop_capacity)
        self.feed = RoutesBroadcaster()
        self.router = Router(settings, hop_sink=self.hops.add)
        self.routes_token = new_api_token(24)  # read-only: the routes feed
        self.token = new_api_token(32)  # the daemon's
        self.stop_requested = asyncio.Event()
        self.started_at = time.time()
        self.units_version = 0
        self._units_changed = asyncio.Event()
        self.runtime: LocalRuntime | None = None

    # units

    def _unit_changed(self) -> None:
        if self.runtime is not None:
            # The router names the process behind each connection (hops' `caller`).
            self.router.callers.set_identities({
                state.pid: state.service if not state.sandbox
                else f"{state.service}@{state.sandbox}"
                for state in self.runtime.states().values() if state.pid})
        self.units_version += 1
        self._units_changed.set()
        self._units_changed = asyncio.Event()

    async def wait_units(self, since: int, timeout: float) -> None:
        if since >= self.units_version and not self.stop_requested.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._units_changed.wait(), timeout)

    def units_json(self) -> list[dict[str, Any]]:
        assert self.runtime is not None
        specs = self.runtime.specs()
        return [{"state": state.to_json(), "spec": specs[unit].to_json()}
                for unit, state in self.runtime.states().items() if unit in specs]

    async def drain(self, state: UnitState, timeout: float | None = None) -> None:
        """Wait until the requests the router gave this unit are done (bounded)."""
        if state.port is None:
            return
        left = await self.router.pool.drained(Upstream(LOCAL_HOST, state.port),
                                              self.drain_timeout if timeout is None else timeout)
        if left:
            log.warning("%s: %d requests still in flight after the %gs drain; stopping it",
                        state.unit, left, self.drain_timeout)

    async def stop_unit(self, unit: str, drain: float | None) -> None:
        assert self.runtime is not None

        async def _drain(state: UnitState) -> None:
            await self.drain(state, drain)

        await self.runtime.stop(unit, _drain)

    # routes and listeners

    def apply_routes(self, table: RouteTable) -> int:
        changes = self.feed.publish(table)
        if changes is not None:
            self.router.apply([changes])
        return self.feed.version

    async def set_listeners(self, wanted: dict[str, int],
                            protocols: Mapping[str, str] | None = None) -> list[str]:
        """Serve exactly `wanted` (service -> public port), reaching each service's processes by
        its protocol in `protocols` ("http" when absent); returns the problems (a port taken),
        each a sentence for the user."""
        problems = []
        protocols = protocols or {}
        for service in [s for s in self.router.ports if s not in wanted]:
            await self.router.unlisten(service)
        for service, port in wanted.items():
            protocol = protocols.get(service, "http")
            if self.router.ports.get(service) == port:
                # Same port, perhaps another protocol (laneway.yaml changed, the daemon was
                # restarted): the listener stays, its context reaches upstreams the new way.
                self.router.context(service, protocol)
                continue
            if service in self.router.ports:
                await self.router.unlisten(service)
            try:
                await self.router.listen(service, port, protocol)
            except RouterError as exc:
                problems.append(str(exc))
        return problems

    async def set_edge(self, port: int | None, fallback: bool) -> str | None:
        """Serve the preview edge on `port` (None: no edge); a problem as a sentence. An edge
        that already serves stays where it is when `port` is the default it fell back from (a
        restarted daemon asks again)."""
        edge = self.router.edge
        if port is None:
            await self.router.unlisten_edge()
            return None
        if edge is not None and (edge.port == port or fallback):
            return None
        try:
            await self.router.listen_edge(port, fallback=fallback)
        except RouterError as exc:
            return str(exc)
        return None

    def listener_protocols(self) -> dict[str, str]:
        return {service: self.router.contexts[service].protocol
                for service in self.router.ports if service in self.router.contexts}

    # running

    async def run(self) -> int:
        from laneway.dataplane.api import control_app

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_requested.set)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        internal = self.raw_settings.get("internal_ports")
        self.runtime = LocalRuntime(self.layout.root, extra_env={
            "LANEWAY_ROUTES_URL": f"{url}/v1/routes", "LANEWAY_ROUTES_TOKEN": self.routes_token},
            port_range=(int(internal[0]), int(internal[1])) if internal else None)
        if self.runtime.reaped:
            log.warning("stopped processes left by a previous data plane: %s",
                        ", ".join(self.runtime.reaped))
        self.runtime.subscribe(self._unit_changed)
        # Long polls (the daemon's) are cut at shutdown rather than waited for.
        server = _Server(uvicorn.Config(control_app(self, self.token), log_level="warning",
                                        lifespan="off", access_log=False,
                                        timeout_graceful_shutdown=1))
        tasks = [
            loop.create_task(server.serve(sockets=[sock]), name="dataplane-api"),
            loop.create_task(keep_rotated(self.layout.dataplane_log), name="dataplane-log"),
        ]
        while not server.started:
            if tasks[0].done():
                break
            await asyncio.sleep(0.01)
        write_private(self.layout.dataplane_info, json.dumps({
            "pid": os.getpid(), "startedAt": self.started_at, "url": url, "token": self.token,
            "settings": self.raw_settings}))
        freeze_startup()  # what start-up made is not walked by every full collection
        try:
            await self.stop_requested.wait()
        finally:
            self._unit_changed()  # answers the daemon's long polls now
            self.hops.add([])
            # Stop accepting, then stop every process, then stop answering the daemon.
            with contextlib.suppress(FileNotFoundError):
                self.layout.dataplane_info.unlink()
            await self.router.close()
            await self.runtime.close()
            server.should_exit = True
            tasks[1].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return 0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield  # the data plane owns signal handling


def _lock(layout: StateLayout) -> int | None:
    fd = os.open(layout.dataplane_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd  # held until the process exits


ROUTER_FIELDS = frozenset(field.name for field in dataclasses.fields(RouterSettings))


def main(argv: list[str]) -> int:
    restrict_umask()  # .laneway/ stays private; the processes it starts get the user's umask
    parser = argparse.ArgumentParser(prog="python -m laneway.dataplane")
    parser.add_argument("--state", required=True, type=Path, help="the .laneway folder")
    parser.add_argument("--settings", default="{}", help="router settings, JSON")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s laneway-dataplane: %(levelname)s %(message)s")
    layout = StateLayout(args.state.resolve())
    make_private(layout.root)
    if _lock(layout) is None:
        print(f"Error: a data plane already runs for {layout.root}",  # noqa: T201
              file=sys.stderr)
        return 3
    raw = json.loads(args.settings)
    given: dict[str, Any] = {name: value for name, value in raw.items()
                             if name in ROUTER_FIELDS}
    for listed in ("extra_headers", "capture_services"):
        if listed in given:
            given[listed] = tuple(given[listed])
    settings = RouterSettings(**given)
    # Many client connections are the router's job: lift the soft fd limit, as nginx does.
    raise_fd_limit()
    plane = DataPlane(layout, settings, raw, args.drain_timeout)
    return uvloop.run(plane.run())
