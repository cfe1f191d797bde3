"""`LocalRuntime`: the `Runtime` interface over supervised processes.

State lives under the environment's `.laneway/` folder: `logs/` (one file per unit, kept across
restarts of the unit) and `run/` (pid files of running process groups).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

from laneway.core.runtime import ProcessSpec, UnitState
from laneway.runtime.local.process import SupervisedProcess, reap_leftovers

__all__ = ["LocalRuntime"]


class LocalRuntime:
    def __init__(self, state_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.extra_env = dict(extra_env or {})  # given to every process, not part of specs
        self.pid_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"
        self._units: dict[str, SupervisedProcess] = {}
        self._callbacks: list[Callable[[], None]] = []
        self.reaped = reap_leftovers(self.pid_dir)

    def states(self) -> Mapping[str, UnitState]:
        return {unit: proc.state for unit, proc in self._units.items()}

    def log_path(self, unit: str) -> Path:
        service, _, rest = unit.partition("@")
        if not rest:
            return self.log_dir / "baseline" / f"{service}.log"
        sandbox, _, digest = rest.partition("#")
        return self.log_dir / "sandboxes" / sandbox / f"{service}-{digest}.log"

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self) -> None:
        for callback in self._callbacks:
            callback()

    async def start(self, spec: ProcessSpec) -> None:
        if spec.unit in self._units:
            return
        proc = SupervisedProcess(spec, self.log_path(spec.unit), self.pid_dir, self._changed,
                                 self.extra_env)
        self._units[spec.unit] = proc
        proc.start()
        self._changed()

    async def stop(self, unit: str) -> None:
        proc = self._units.get(unit)
        if proc is None:
            return
        await proc.stop()
        self._units.pop(unit, None)
        self._changed()

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(unit) for unit in list(self._units)))
