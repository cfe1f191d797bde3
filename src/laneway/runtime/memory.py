"""An in-memory `Runtime` for tests of the control plane: units change phase when told to."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from laneway.core.routes import RouteTable
from laneway.core.runtime import Phase, ProcessSpec, UnitState

__all__ = ["MemoryRuntime"]


class MemoryRuntime:
    def __init__(self, auto_ready: bool = True) -> None:
        self.auto_ready = auto_ready
        self.specs: dict[str, ProcessSpec] = {}
        self._states: dict[str, UnitState] = {}
        self._callbacks: list[Callable[[], None]] = []
        self._next_port = 20000
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.routes: RouteTable | None = None

    async def publish_routes(self, table: RouteTable) -> None:
        self.routes = table

    async def sync_hops(self) -> None:
        pass

    def running_specs(self) -> Mapping[str, ProcessSpec]:
        return dict(self.specs)

    def states(self) -> Mapping[str, UnitState]:
        return dict(self._states)

    def log_path(self, unit: str) -> Path | None:
        return None

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def set_phase(self, unit: str, phase: Phase, message: str = "") -> None:
        state = self._states[unit]
        state.phase = phase
        state.message = message
        for callback in self._callbacks:
            callback()

    async def start(self, spec: ProcessSpec) -> None:
        self._next_port += 1
        self.specs[spec.unit] = spec
        self.started.append(spec.unit)
        self._states[spec.unit] = UnitState(
            spec.unit, spec.service, spec.sandbox,
            "ready" if self.auto_ready else "starting", port=self._next_port,
        )
        for callback in self._callbacks:
            callback()

    async def stop(self, unit: str) -> None:
        self._states.pop(unit, None)
        self.specs.pop(unit, None)
        self.stopped.append(unit)
        for callback in self._callbacks:
            callback()

    async def close(self) -> None:
        for unit in list(self._states):
            await self.stop(unit)
