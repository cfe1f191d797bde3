"""The resource manager: creates a sandbox's resources before its forks start and deletes them
after its forks have stopped, through the plugins, keeping each resource's state in the store.

It is driven by the reconciler (level-triggered): every pass compares the declared resources
with the stored states and starts create/delete tasks for the differences. A failed create is
cleaned up by the plugin's delete and retried with backoff; its message is the plugin's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from laneway.core.resources import PluginError, ResourceContext, ResourcePlugin, ResourceView
from laneway.core.spec import SandboxSpec, SpecError, format_loc

__all__ = ["ResourceManager"]

log = logging.getLogger(__name__)
RETRY_START = 5.0
RETRY_MAX = 60.0


class ResourceManager:
    def __init__(self, plugins: dict[str, ResourcePlugin], state_dir: Path, base_dir: Path,
                 store: Any, wake: Any) -> None:
        self.plugins = plugins
        self.state_dir = state_dir
        self.base_dir = base_dir
        self.store = store
        self._wake = wake
        self._states: dict[tuple[str, str], dict[str, Any]] = {
            (sb, name): state for sb, name, state in store.resource_states()}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    # validation (called by the API before anything is stored)

    def validate(self, spec: SandboxSpec, previous: SandboxSpec | None) -> None:
        issues: list[tuple[str, str]] = []
        before = {r.name: r for r in previous.resources} if previous else {}
        for i, resource in enumerate(spec.resources):
            plugin = self.plugins.get(resource.plugin)
            if plugin is None:
                issues.append((f"resources[{i}].plugin", f"unknown plugin {resource.plugin!r}; "
                               f"built in: {', '.join(sorted(self.plugins))}"))
                continue
            try:
                plugin.params_model.model_validate(resource.params)
            except ValidationError as exc:
                for err in exc.errors():
                    loc = format_loc(("resources", i, "params", *err["loc"]))
                    issues.append((loc, str(err["msg"])))
            old = before.get(resource.name)
            if old is not None and (old.plugin, old.params) != (resource.plugin,
                                                                 resource.params):
                issues.append((f"resources[{i}]", f"resource {resource.name!r} cannot change in "
                               "place; give it a new name (the old one is then deleted)"))
        if issues:
            raise SpecError(issues)

    # state

    def views(self, sandbox: str) -> dict[str, ResourceView]:
        out = {}
        for (sb, name), state in self._states.items():
            if sb == sandbox:
                out[name] = ResourceView(state["phase"], dict(state.get("outputs") or {}),
                                         state.get("message", ""))
        return out

    def status(self, sandbox: str) -> list[dict[str, Any]]:
        return [{"name": name, "plugin": state["plugin"], "phase": state["phase"],
                 "message": state.get("message", ""), "outputs": state.get("outputs") or {}}
                for (sb, name), state in sorted(self._states.items()) if sb == sandbox]

    def _save(self, sandbox: str, name: str, state: dict[str, Any]) -> None:
        self._states[(sandbox, name)] = state
        self.store.put_resource(sandbox, name, state)

    def _forget(self, sandbox: str, name: str) -> None:
        self._states.pop((sandbox, name), None)
        self.store.delete_resource(sandbox, name)

    def _params(self, plugin: ResourcePlugin, params: dict[str, Any]) -> Any:
        model = plugin.params_model.model_validate(params)
        path = getattr(model, "path", None)
        if isinstance(path, str) and not Path(path).is_absolute():
            model = model.model_copy(update={"path": str(self.base_dir / path)})
        return model

    def _context(self, sandbox: str, name: str, routing_key: str) -> ResourceContext:
        return ResourceContext(sandbox, name, routing_key,
                               self.state_dir / sandbox)

    # reconcile

    def reconcile(self, sandboxes: Iterable[tuple[SandboxSpec, str]],
                  running: set[str]) -> None:
        """`sandboxes`: (spec, routing key) of every stored sandbox; `running`: sandboxes that
        still have processes (their resources are not deleted until those have stopped)."""
        declared: dict[tuple[str, str], tuple[Any, str]] = {}
        for spec, key in sandboxes:
            for resource in spec.resources:
                declared[(spec.name, resource.name)] = (resource, key)
        now = time.time()
        for ident, (resource, key) in declared.items():
            if ident in self._tasks:
                continue
            state = self._states.get(ident)
            if state is None or (state["phase"] == "failed" and now >= state.get("retry_at", 0)):
                self._start_create(ident, resource, key, state)
        for ident, state in list(self._states.items()):
            if ident in declared or ident in self._tasks:
                continue
            if ident[0] in running or (now < state.get("retry_at", 0) and state.get(
                    "delete_failed")):
                continue  # forks first, then their state; a failed delete waits its turn
            self._start_delete(ident, state)

    def _spawn(self, ident: tuple[str, str], coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"laneway-resource-{what}")
        self._tasks[ident] = task

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(ident, None)
            self._wake()

        task.add_done_callback(done)

    def _start_create(self, ident: tuple[str, str], resource: Any, key: str,
                      previous: dict[str, Any] | None) -> None:
        sandbox, name = ident
        attempts = (previous or {}).get("attempts", 0)
        state = {"plugin": resource.plugin, "params": resource.params, "phase": "creating",
                 "message": "creating", "outputs": {}, "private": {}, "routing_key": key,
                 "attempts": attempts + 1}
        self._save(sandbox, name, state)
        self._spawn(ident, self._create(ident, resource, key, state), f"create-{name}")

    async def _create(self, ident: tuple[str, str], resource: Any, key: str,
                      state: dict[str, Any]) -> None:
        sandbox, name = ident
        plugin = self.plugins[resource.plugin]
        ctx = self._context(sandbox, name, key)
        params = self._params(plugin, resource.params)
        try:
            outputs, private = await plugin.create(ctx, params)
        except Exception as exc:
            message = str(exc) if isinstance(exc, PluginError) else \
                f"{resource.plugin}: {type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):  # nothing half-made is left behind
                await plugin.delete(ctx, params, {})
            delay = min(RETRY_MAX, RETRY_START * 2 ** (state["attempts"] - 1))
            self._save(sandbox, name, {**state, "phase": "failed",
                                       "message": f"{message} (retrying in {delay:g}s)",
                                       "retry_at": time.time() + delay})
            log.warning("resource %s of sandbox %s failed: %s", name, sandbox, message)
            return
        self._save(sandbox, name, {**state, "phase": "ready", "message": "ready",
                                   "outputs": outputs, "private": private, "attempts": 0})

    def _start_delete(self, ident: tuple[str, str], state: dict[str, Any]) -> None:
        sandbox, name = ident
        self._save(sandbox, name, {**state, "phase": "deleting", "message": "deleting"})
        self._spawn(ident, self._delete(ident, state), f"delete-{name}")

    async def _delete(self, ident: tuple[str, str], state: dict[str, Any]) -> None:
        sandbox, name = ident
        plugin = self.plugins.get(state["plugin"])
        made = state["phase"] != "failed" or state.get("delete_failed")
        if plugin is not None and made:
            ctx = self._context(sandbox, name, state.get("routing_key", ""))
            try:
                await plugin.delete(ctx, self._params(plugin, state["params"]),
                                    state.get("private") or {})
            except Exception as exc:
                log.warning("deleting resource %s of sandbox %s failed: %s", name, sandbox, exc)
                self._save(sandbox, name, {**state, "phase": "failed", "delete_failed": True,
                                           "message": f"delete failed: {exc} (retrying)",
                                           "retry_at": time.time() + RETRY_MAX / 2})
                return
        self._forget(sandbox, name)

    def busy(self, sandbox: str) -> bool:
        return any(sb == sandbox for sb, _ in self._tasks)

    async def close(self) -> None:
        """Wait for creates and deletes in flight (resources outlive the daemon)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=30)
        for task in list(self._tasks.values()):
            task.cancel()
