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
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from laneway.core.routes import RouteTable

__all__ = [
    "Phase", "ProcessSpec", "Runtime", "UnitState", "baseline_revision", "baseline_unit",
    "fork_unit", "unit_log_path",
]

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
    # `HOST:PORT` of a process the developer runs by hand: watched and routed to, never
    # started or stopped (`argv` is empty).
    address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "service": self.service,
            "sandbox": self.sandbox,
            "argv": list(self.argv),
            "env": dict(self.env),
            "cwd": self.cwd,
            "health": self.health,
            "startup_timeout": self.startup_timeout,
            **({"address": self.address} if self.address else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessSpec:
        return cls(
            unit=str(data["unit"]),
            service=str(data["service"]),
            sandbox=data.get("sandbox"),
            argv=tuple(str(a) for a in data["argv"]),
            env=tuple(sorted((str(k), str(v)) for k, v in dict(data["env"]).items())),
            cwd=data.get("cwd"),
            health=str(data["health"]),
            startup_timeout=float(data.get("startup_timeout", 30.0)),
            address=data.get("address") or None,
        )


def spec_hash(service: str, argv: list[str], env: Mapping[str, str], cwd: str | None,
              health: str, incarnation: str = "") -> str:
    """A short digest of what makes a fork different; a changed fork gets a new unit."""
    blob = json.dumps([service, argv, sorted(env.items()), cwd, health, incarnation],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


REVISION_MARK = "~"


def baseline_unit(service: str, revision: int = 0) -> str:
    """A baseline service's unit: `pricing`, then `pricing~1`, `pricing~2`… for the processes
    that replace it (`laneway restart`, `reload`), which run beside it until they are ready."""
    return f"{service}{REVISION_MARK}{revision}" if revision else service


def baseline_revision(unit: str) -> int:
    _, mark, revision = unit.partition(REVISION_MARK)
    return int(revision) if mark and revision.isdigit() else 0


def fork_unit(service: str, sandbox: str, digest: str) -> str:
    return f"{service}@{sandbox}#{digest}"


def unit_log_path(state_dir: Path, unit: str) -> Path:
    """Where a unit's output is kept: `logs/baseline/<service>.log` (all its revisions), or
    `logs/sandboxes/<sandbox>/<service>-<digest>.log` for a fork (kept across its restarts)."""
    service, _, rest = unit.partition("@")
    if not rest:  # every revision of a baseline service writes the same log, one after another
        return state_dir / "logs" / "baseline" / f"{service.partition(REVISION_MARK)[0]}.log"
    sandbox, _, digest = rest.partition("#")
    return state_dir / "logs" / "sandboxes" / sandbox / f"{service}-{digest}.log"


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
    errors: int = 0  # unexpected exceptions caught while supervising it (each was logged)
    last_failure: str = ""  # why its last run ended (kept once it is ready again)

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
            "errors": self.errors,
            "last_failure": self.last_failure,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnitState:
        return cls(
            unit=str(data["unit"]),
            service=str(data["service"]),
            sandbox=data.get("sandbox"),
            phase=data["phase"],
            port=data.get("port"),
            pid=data.get("pid"),
            restarts=int(data.get("restarts", 0)),
            message=str(data.get("message", "")),
            exit_code=data.get("exit_code"),
            started_at=float(data.get("started_at") or 0.0),
            ready_at=data.get("ready_at"),
            errors=int(data.get("errors", 0)),
            last_failure=str(data.get("last_failure", "")),
        )


class Runtime(Protocol):
    # The routes table the data plane routes by now (None: not known yet). The planner keeps
    # the units it names running until a sandbox switches to its new forks all at once.
    routes: RouteTable | None

    def states(self) -> Mapping[str, UnitState]: ...

    def running_specs(self) -> Mapping[str, ProcessSpec]:
        """The spec each unit was started with (a restarted daemon compares them)."""

    async def publish_routes(self, table: RouteTable) -> None:
        """Make `table` the one requests are routed by; returns once the routers use it."""

    async def start(self, spec: ProcessSpec) -> None:
        """Begin running `spec.unit`; returns at once, supervision continues in the background."""

    async def stop(self, unit: str) -> None:
        """Stop the unit gracefully and forget it; returns once it has exited."""

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the event loop) whenever any unit's state changes."""

    def log_path(self, unit: str) -> Path | None: ...

    async def sync_hops(self) -> None:
        """Hand over every hop record the routers made up to now (before a run's report)."""

    async def close(self) -> None:
        """Stop every unit."""
