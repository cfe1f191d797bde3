"""The reconciler: level-triggered, idempotent convergence of the runtime to the store.

Each pass reads desired state (store) and actual state (runtime), plans with the pure functions
of `core.plan`, starts what is missing, publishes the new routing table to the data plane (and
waits until its routers use it), and only then stops what is no longer wanted, so a deleted or
replaced fork stops getting traffic before it stops running (the data plane lets it finish the
requests it has first). Statuses (what `apply --wait` waits for) change only once the routes
they describe are in use. Passes run when woken (an API mutation, a process changing phase) and
every second regardless, which also expires sandboxes whose TTL has passed; a failing pass is
logged once per distinct cause and retried with backoff, never in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from laneway.control.plane import ControlPlane
from laneway.core.plan import all_desired_forks, baseline_units, build_routes, plan_actions
from laneway.core.routes import diff_tables

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)

TICK = 1.0
BACKOFF_MAX = 30.0


class Reconciler:
    def __init__(self, control: ControlPlane) -> None:
        self.control = control
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._logged: set[str] = set()
        self._retry_at: dict[str, tuple[float, float]] = {}  # unit -> (when, last delay)
        self.failures = 0  # consecutive failed passes
        control.runtime.subscribe(control.wake)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="laneway-reconcile")

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile_once()
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.control.reconcile_error = f"{type(exc).__name__}: {exc}"
                cause = self.control.reconcile_error
                if cause not in self._logged:
                    self._logged.add(cause)
                    log.exception("reconcile pass failed (%s); retrying with backoff", cause)
                await asyncio.sleep(min(0.25 * 2 ** min(self.failures, 8), BACKOFF_MAX))
                continue
            self.control.reconcile_error = ""
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
        runtime = control.runtime
        previous = runtime.routes
        # A unit being replaced (`laneway restart`) that has stopped needs no more replacing.
        control.retiring.intersection_update(runtime.states())
        plan = plan_actions(control.project, sandboxes, runtime.states(), forks, previous,
                            runtime.running_specs(), control.retiring)
        for spec in plan.start:
            await runtime.start(spec)
        actual = runtime.states()
        baseline = baseline_units(control.project, actual, runtime.running_specs(),
                                  control.retiring)
        table, statuses, group_statuses = build_routes(
            control.feed.version + 1, control.project, sandboxes, groups, actual, forks,
            previous, captured=control.captured_keys, baseline=baseline,
        )
        if previous is None or not diff_tables(previous, table).empty:
            await runtime.publish_routes(table)
        control.feed.publish(table)
        control.sandbox_status = statuses
        control.group_status = group_statuses
        control.baseline = baseline
        # What the routes just published no longer name can go (drained first).
        stop = plan_actions(control.project, sandboxes, actual, forks, table,
                            baseline=baseline).stop
        now = time.monotonic()
        for unit in stop:
            if unit not in self._stopping and self._retry_at.get(unit, (0.0, 0.0))[0] <= now:
                task = asyncio.get_running_loop().create_task(
                    self._stop(unit), name=f"laneway-stop-{unit}"
                )
                self._stopping[unit] = task
        control.pass_done()

    async def _stop(self, unit: str) -> None:
        try:
            await self.control.runtime.stop(unit)
            self._retry_at.pop(unit, None)
        except Exception as exc:  # retried with backoff, never in a tight loop
            delay = min(max(self._retry_at.get(unit, (0.0, 0.5))[1] * 2, 1.0), BACKOFF_MAX)
            self._retry_at[unit] = (time.monotonic() + delay, delay)
            cause = f"stopping {unit}: {type(exc).__name__}: {exc}"
            if cause not in self._logged:
                self._logged.add(cause)
                log.error("%s; retrying in %gs", cause, delay)
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
