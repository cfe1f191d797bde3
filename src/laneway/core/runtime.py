"""The runtime interface: what the control plane asks of whatever starts processes.

The control plane depends on this protocol only; `laneway.runtime.local` implements it with
supervised processes on this machine, `laneway.runtime.memory` in memory for tests of the
reconciler, and a Kubernetes runtime can implement it with Deployments.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = ["Phase", "ProcessSpec", "Runtime", "UnitState", "baseline_unit", "fork_unit"]

Phase = Literal["starting", "ready", "crashed", "unhealthy", "stopping"]


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process to keep running: a baseline service or a fork."""

    unit: str
    service: str
    sandbox: str | None
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str | None
    health: str
    startup_timeout: float

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "service": self.service,
            "sandbox": self.sandbox,
            "argv": list(self.argv),
            "env": dict(self.env),
            "cwd": self.cwd,
            "health": self.health,
        }


def spec_hash(service: str, argv: list[str], env: Mapping[str, str], cwd: str | None,
              health: str) -> str:
    """A short digest of what makes a fork different; a changed fork gets a new unit."""
    blob = json.dumps([service, argv, sorted(env.items()), cwd, health], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def baseline_unit(service: str) -> str:
    return service


def fork_unit(service: str, sandbox: str, digest: str) -> str:
    return f"{service}@{sandbox}#{digest}"


@dataclass(slots=True)
class UnitState:
    """What the runtime knows about one unit right now."""

    unit: str
    service: str
    sandbox: str | None
    phase: Phase
    port: int | None = None
    pid: int | None = None
    restarts: int = 0
    message: str = ""
    exit_code: int | None = None
    started_at: float = 0.0
    ready_at: float | None = None
    log_tail: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.phase in ("crashed", "unhealthy")

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "service": self.service,
            "sandbox": self.sandbox,
            "phase": self.phase,
            "port": self.port,
            "pid": self.pid,
            "restarts": self.restarts,
            "message": self.message,
            "exit_code": self.exit_code,
            "started_at": self.started_at or None,
            "ready_at": self.ready_at,
        }


class Runtime(Protocol):
    def states(self) -> Mapping[str, UnitState]: ...

    async def start(self, spec: ProcessSpec) -> None:
        """Begin running `spec.unit`; returns at once, supervision continues in the background."""

    async def stop(self, unit: str) -> None:
        """Stop the unit gracefully and forget it; returns once it has exited."""

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the event loop) whenever any unit's state changes."""

    def log_path(self, unit: str) -> Path | None: ...

    async def close(self) -> None:
        """Stop every unit."""
