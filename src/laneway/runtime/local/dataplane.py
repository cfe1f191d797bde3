"""`DataPlaneRuntime`: the daemon's `Runtime`, a client of the data plane process.

The control plane asks the data plane (`laneway.dataplane`, its own process) to start and stop
units, to serve the service ports, to route by a table, and reads back unit states and hop
records by long polls. `connect()` adopts a data plane that is already running (the daemon was
restarted or had crashed) or starts one; while connected, one that died is started again, and
the reconciler is told to publish its whole table again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from laneway.core.hops import Hop
from laneway.core.layout import StateLayout, user_umask
from laneway.core.processes import alive, owner_env
from laneway.core.routes import RouteTable
from laneway.core.runtime import ProcessSpec, UnitState, unit_log_path

__all__ = ["DataPlaneError", "DataPlaneRuntime"]

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0


class DataPlaneError(Exception):
    """The data plane cannot be reached or refused what was asked (a port in use)."""


class DataPlaneRuntime:
    def __init__(self, state_dir: Path, settings: Mapping[str, Any], drain_timeout: float,
                 hop_sink: Callable[[list[Hop]], None] | None = None) -> None:
        self.layout = StateLayout(state_dir)
        self.settings = dict(settings)
        self.drain_timeout = drain_timeout
        self.hop_sink = hop_sink
        self.routes: RouteTable | None = None  # the table the data plane routes by now
        self.adopted = False  # connect() found a data plane already running
        self.pid: int | None = None
        self._listeners: dict[str, int] = {}
        self._preview: tuple[int, bool] | None = None
        self.preview_port: int | None = None  # the preview edge's, once `listen` bound it
        self.unit_env: dict[str, str] = {}  # what every unit gets besides its spec
        self._protocols: dict[str, str] = {}
        self._states: dict[str, UnitState] = {}
        self._specs: dict[str, ProcessSpec] = {}
        self._version = -1
        self._hops_seq = 0
        self._callbacks: list[Callable[[], None]] = []
        self._http: httpx.AsyncClient | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # connecting

    def _info(self) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads(self.layout.dataplane_info.read_text())
        except (OSError, ValueError):
            return None
        return info

    async def _try_attach(self) -> dict[str, Any] | None:
        info = self._info()
        if info is None:
            return None
        http = httpx.AsyncClient(base_url=info["url"], timeout=httpx.Timeout(10, read=45),
                                 headers={"authorization": f"Bearer {info['token']}"})
        try:
            resp = await http.get("/v1/state")
            resp.raise_for_status()
        except httpx.HTTPError:
            await http.aclose()
            return None
        if self._http is not None:
            await self._http.aclose()
        self._http = http
        state: dict[str, Any] = resp.json()
        return state

    def _spawn(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.layout.dataplane_info.unlink()
        env = {**os.environ, **owner_env(self.layout.root), "LANEWAY_ROLE": "dataplane"}
        fd = os.open(self.layout.dataplane_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "laneway.dataplane", "--state", str(self.layout.root),
                 "--settings", json.dumps(self.settings),
                 "--drain-timeout", str(self.drain_timeout)],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
                start_new_session=True, umask=user_umask())
        finally:
            os.close(fd)

    async def connect(self) -> None:
        """Adopt the running data plane, or start one; then read what it runs and routes."""
        state = await self._try_attach()
        self.adopted = state is not None
        if state is None:
            self._spawn()
            deadline = time.monotonic() + START_TIMEOUT
            while state is None:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise DataPlaneError("the data plane exited at start: "
                                         + _tail(self.layout.dataplane_log))
                if time.monotonic() > deadline:
                    raise DataPlaneError(f"the data plane did not start within "
                                         f"{START_TIMEOUT:g}s; see {self.layout.dataplane_log}")
                await asyncio.sleep(0.05)
                state = await self._try_attach()
        elif state.get("settings") != self.settings:
            log.warning("the router settings in laneway.yaml changed; the running data plane "
                        "keeps the old ones until `laneway down` and `laneway up`")
        self.pid = int(state["pid"])
        self.unit_env = {str(k): str(v) for k, v in (state.get("unitEnv") or {}).items()}
        self.routes = RouteTable.from_json(state["routes"])
        self._version = -1
        self._take_units(state["unitsVersion"], state["units"])
        # Hops recorded while no daemon listened are read too (the buffer is bounded).
        self._hops_seq = 0
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._watch_units(), name="laneway-dp-units"),
                           loop.create_task(self._follow_hops(), name="laneway-dp-hops")]

    async def _reconnect(self) -> None:
        """The data plane went away under a running daemon: start a new one (it stops what the
        old one left), serve the ports again, and make the reconciler publish everything."""
        log.error("the data plane is gone; starting a new one")
        await self.connect()
        if self._listeners:
            await self.listen(self._listeners, self._protocols, self._preview)
        self._changed()

    # the Runtime interface

    def states(self) -> Mapping[str, UnitState]:
        return self._states

    def running_specs(self) -> Mapping[str, ProcessSpec]:
        return self._specs

    def log_path(self, unit: str) -> Path:
        return unit_log_path(self.layout.root, unit)

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self) -> None:
        for callback in self._callbacks:
            callback()

    def _take_units(self, version: int, units: list[dict[str, Any]]) -> None:
        # Answers to a long poll and to a start may cross: never go back to an older view.
        # (A new data plane numbers from 0 again: `connect` resets the version first.)
        if version < self._version:
            return
        self._version = version
        self._states = {u["state"]["unit"]: UnitState.from_json(u["state"]) for u in units}
        self._specs = {u["spec"]["unit"]: ProcessSpec.from_json(u["spec"]) for u in units}
        self._changed()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if self._http is None:
            raise DataPlaneError("not connected to the data plane")
        try:
            resp = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DataPlaneError(f"the data plane did not answer {method} {path}: "
                                 f"{exc or type(exc).__name__}") from exc
        if resp.status_code >= 400:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise DataPlaneError(str(message))
        result: dict[str, Any] = resp.json()
        return result

    async def start(self, spec: ProcessSpec) -> None:
        data = await self._call("POST", "/v1/units/start", json=spec.to_json())
        self._take_units(data["version"], data["units"])

    async def stop(self, unit: str) -> None:
        """Drain and stop `unit`: it gets no new requests (the routes no longer name it), the
        ones it has finish (at most the drain timeout), then SIGTERM."""
        data = await self._call("POST", "/v1/units/stop",
                                json={"unit": unit, "drain": self.drain_timeout},
                                timeout=httpx.Timeout(10, read=self.drain_timeout + 30))
        self._take_units(data["version"], data["units"])

    async def listen(self, services: Mapping[str, int],
                     protocols: Mapping[str, str] | None = None,
                     preview: tuple[int, bool] | None = None) -> None:
        """Serve each service on its public port; `protocols` says how the routers reach a
        service's processes ("http", "h2c", "grpc"; absent: "http"). `preview`: (port,
        fallback) of the preview edge, None for none; `preview_port` is where it is bound."""
        self._listeners = dict(services)
        self._protocols = dict(protocols or {})
        self._preview = preview
        data = await self._call("PUT", "/v1/listeners", json={
            "services": self._listeners, "protocols": self._protocols,
            "preview": None if preview is None else {"port": preview[0],
                                                     "fallback": preview[1]}})
        self.preview_port = data.get("preview")

    async def publish_routes(self, table: RouteTable) -> None:
        """Make `table` the one the routers use; returns once they do."""
        await self._call("PUT", "/v1/routes", json=table.to_json())
        self.routes = table

    # following

    async def _watch_units(self) -> None:
        failures = 0
        while True:
            try:
                data = await self._call("GET", "/v1/units",
                                        params={"since": self._version, "wait": 25})
                failures = 0
            except DataPlaneError:
                if self._closing:
                    return
                failures += 1
                if failures >= 3 and not self._alive():
                    with contextlib.suppress(DataPlaneError):
                        await self._reconnect()
                await asyncio.sleep(min(0.2 * failures, 2.0))
                continue
            if data["version"] != self._version:
                self._take_units(data["version"], data["units"])

    async def _follow_hops(self) -> None:
        while True:
            since = self._hops_seq
            try:
                data = await self._call("GET", "/v1/hops", params={"since": since, "wait": 25})
            except DataPlaneError:
                if self._closing:
                    return
                await asyncio.sleep(0.5)
                continue
            self._take_hops(since, data)

    def _take_hops(self, since: int, data: dict[str, Any]) -> bool:
        """Hand the records of an answer to `GET /v1/hops?since=since` to the sink; True when
        there may be more. The long poll and `sync_hops` ask concurrently: an answer to a
        `since` that the other has already moved past holds records taken once already."""
        if since != self._hops_seq:
            return False
        if data["seq"] < since:  # a new data plane numbers from 0 again
            self._hops_seq = 0
            return True
        if data["seq"] == since:
            return False
        self._hops_seq = data["seq"]
        # Rows of `fields` (this version's data plane), or objects (an older one, adopted).
        hops = [Hop.from_row(data["fields"], row) for row in data["rows"]] if "rows" in data \
            else [Hop.from_json(h) for h in data.get("hops") or []]
        if hops and self.hop_sink is not None:
            self.hop_sink(hops)
        return True

    def _alive(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None and self._proc.pid == self.pid:
            return self._proc.poll() is None  # our child: collect it
        return alive(self.pid)

    async def sync_hops(self) -> None:
        """Read every hop recorded up to now (a run's report waits for this)."""
        with contextlib.suppress(DataPlaneError):
            while True:
                since = self._hops_seq
                data = await self._call("GET", "/v1/hops", params={"since": since})
                if not self._take_hops(since, data) and since == self._hops_seq:
                    return

    # ending

    async def _stop_tasks(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def close(self) -> None:
        """Shut the data plane down (every unit stops) and wait until it has exited."""
        await self._stop_tasks()
        with contextlib.suppress(DataPlaneError):
            await self._call("POST", "/v1/shutdown")
        deadline = time.monotonic() + 60
        while self._alive():  # another process: there is no event to wait on
            if time.monotonic() > deadline:
                log.error("the data plane (pid %s) did not stop within 60s", self.pid)
                break
            await asyncio.sleep(0.05)
        if self._http is not None:
            await self._http.aclose()

    async def detach(self) -> None:
        """Stop following without stopping the data plane (it keeps serving)."""
        await self._stop_tasks()
        if self._http is not None:
            await self._http.aclose()


def _tail(path: Path, count: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-count:]) or "(no output)"
