"""`LocalRuntime`: the `Runtime` interface over supervised processes.

The data plane process owns it (`laneway.dataplane`), so that services keep running while the
control plane is stopped or restarted. State lives under the environment's `.laneway/` folder:
`logs/` (one file per unit, kept across restarts of the unit) and `run/` (pid files of running
process groups). Every process carries the environment's marker (`core.processes`): a new
runtime first stops every unit process a crashed one left behind, grandchildren included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from laneway.core.processes import find_marked, owner_env, stop_processes
from laneway.core.runtime import ProcessSpec, UnitState, unit_log_path
from laneway.runtime.local.attached import WatchedAddress
from laneway.runtime.local.process import SupervisedProcess, reap_leftovers

__all__ = ["UNIT_ROLE", "LocalRuntime"]

UNIT_ROLE = {"LANEWAY_ROLE": "unit"}


class LocalRuntime:
    def __init__(self, state_dir: Path, extra_env: dict[str, str] | None = None,
                 port_range: tuple[int, int] | None = None) -> None:
        self.state_dir = state_dir
        self.port_range = port_range  # where internal ports come from (None: the kernel's)
        # Given to every process, not part of specs.
        self.extra_env = {**(extra_env or {}), **owner_env(state_dir), **UNIT_ROLE}
        self.pid_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"
        self._units: dict[str, SupervisedProcess | WatchedAddress] = {}
        self._stops: dict[str, asyncio.Task[None]] = {}
        self._callbacks: list[Callable[[], None]] = []
        self.reaped = reap_leftovers(self.pid_dir)
        leftovers = find_marked(state_dir, UNIT_ROLE)
        if leftovers:
            stop_processes(leftovers)
            self.reaped.append(f"{len(leftovers)} more unit processes (by their marker)")

    def states(self) -> Mapping[str, UnitState]:
        return {unit: proc.state for unit, proc in self._units.items()}

    def specs(self) -> Mapping[str, ProcessSpec]:
        return {unit: proc.spec for unit, proc in self._units.items()}

    def log_path(self, unit: str) -> Path:
        return unit_log_path(self.state_dir, unit)

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self) -> None:
        for callback in self._callbacks:
            callback()

    async def start(self, spec: ProcessSpec) -> None:
        if spec.unit in self._units:
            return
        proc: SupervisedProcess | WatchedAddress
        if spec.address is not None:
            proc = WatchedAddress(spec, self._changed)
        else:
            proc = SupervisedProcess(spec, self.log_path(spec.unit), self.pid_dir,
                                     self._changed, self.extra_env, self.port_range)
        self._units[spec.unit] = proc
        proc.start()
        self._changed()

    async def stop(self, unit: str,
                   drain: Callable[[UnitState], Awaitable[object]] | None = None) -> None:
        """Stop `unit` (after `drain(state)`, which waits for its requests to finish); a second
        call while it stops waits for the same stop. The stop is owned by the runtime, not by
        the caller: a caller that goes away (the control plane, mid-request) does not cut it."""
        if unit not in self._units:
            return
        task = self._stops.get(unit)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._stop(unit, drain),
                                                          name=f"laneway-stop-{unit}")
            self._stops[unit] = task
        await asyncio.shield(task)

    async def _stop(self, unit: str,
                    drain: Callable[[UnitState], Awaitable[object]] | None) -> None:
        proc = self._units[unit]
        try:
            if drain is not None:
                proc.state.phase = "stopping"
                proc.state.message = "draining: finishing the requests it has"
                self._changed()
                await drain(proc.state)
            await proc.stop()
        finally:
            self._units.pop(unit, None)
            self._stops.pop(unit, None)
            self._changed()

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(unit) for unit in list(self._units)),
                             return_exceptions=True)
