"""Per-sandbox resources: the plugin interface and the state the planner reads.

A resource (a Postgres branch, a SQLite copy, a Redis namespace, anything an `exec` plugin
makes) is created before the sandbox's forks start and deleted after they stop; its outputs are
referenced from fork env as `${resources.NAME.OUTPUT}`. Plugins live in `laneway.plugins`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

__all__ = ["PluginError", "ResourceContext", "ResourcePhase", "ResourcePlugin", "ResourceView"]

ResourcePhase = Literal["creating", "ready", "failed", "deleting"]


@dataclass(frozen=True, slots=True)
class ResourceView:
    phase: ResourcePhase
    outputs: dict[str, str] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True, slots=True)
class ResourceContext:
    sandbox: str
    resource: str
    routing_key: str
    state_dir: Path  # where a plugin may keep files for this resource


class PluginError(Exception):
    """A plugin's own account of what went wrong; shown in the sandbox's status as it is."""


class ResourcePlugin(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def params_model(self) -> type[BaseModel]:
        """The pydantic model of its `params` (unknown fields are errors)."""

    async def create(self, ctx: ResourceContext, params: Any) -> tuple[dict[str, str],
                                                                          dict[str, Any]]:
        """Make the resource; returns (outputs, private state for delete). Must leave nothing
        behind when it raises (the manager also calls delete after a failed create)."""

    async def delete(self, ctx: ResourceContext, params: Any, state: dict[str, Any]) -> None:
        """Remove what create made; idempotent; never touches baseline data."""
