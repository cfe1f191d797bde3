"""The reconciler: level-triggered, idempotent convergence of the runtime to the store.

Each pass reads desired state (store) and actual state (runtime), plans with the pure functions
of `core.plan`, starts what is missing, publishes the new routing table, and only then stops what
is no longer wanted, so a deleted or replaced fork stops getting traffic before it stops running.
Passes run when woken (an API mutation, a process changing phase) and every second regardless,
which also expires sandboxes whose TTL has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from laneway.control.plane import ControlPlane
from laneway.core.plan import all_desired_forks, build_routes, plan_actions

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)

TICK = 1.0


class Reconciler:
    def __init__(self, control: ControlPlane) -> None:
        self.control = control
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        control.runtime.subscribe(control.wake)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="laneway-reconcile")

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed; retrying")
            await self.control.wait_for_wake(TICK)

    def _expire(self) -> None:
        now = time.time()
        for rec in self.control.store.records("sandbox"):
            if rec.expires_at is not None and rec.expires_at <= now:
                log.info("sandbox %s expired (ttl)", rec.name)
                self.control.delete_sandbox(rec.name, principal="laneway", reason="expire")

    async def reconcile_once(self) -> None:
        control = self.control
        self._expire()
        sandboxes = control.desired_sandboxes()
        if control.resources is not None:
            running = {st.sandbox for st in control.runtime.states().values() if st.sandbox}
            control.resources.reconcile(((sb.spec, sb.routing_key) for sb in sandboxes),
                                        running)
            # Creates may have just begun: the planner sees the resources as they are now.
            sandboxes = [replace(sb, resources=control.resources.views(sb.spec.name))
                         for sb in sandboxes]
        groups = control.desired_groups()
        forks = all_desired_forks(control.project, sandboxes)
        plan = plan_actions(control.project, sandboxes, control.runtime.states(), forks)
        for spec in plan.start:
            await control.runtime.start(spec)
        table, statuses, group_statuses = build_routes(
            control.feed.version + 1, control.project, sandboxes, groups,
            control.runtime.states(), forks,
        )
        control.feed.publish(table)
        control.sandbox_status = statuses
        control.group_status = group_statuses
        for unit in plan.stop:
            if unit not in self._stopping:
                task = asyncio.get_running_loop().create_task(
                    self._stop(unit), name=f"laneway-stop-{unit}"
                )
                self._stopping[unit] = task
        control.pass_done()

    async def _stop(self, unit: str) -> None:
        try:
            await self.control.runtime.stop(unit)
        finally:
            self._stopping.pop(unit, None)
            self.control.wake()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._stopping:
            await asyncio.gather(*self._stopping.values(), return_exceptions=True)
