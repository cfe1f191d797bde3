"""Reconcile planning: desired state and actual state in, actions and routes out.

The reconciler (control plane) calls these functions on every pass; they are pure so that the
interesting cases (an update whose new fork is still starting, a crashed fork, a route-group
conflict, a baseline that waits for its dependencies) are tested with plain data.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from laneway.core.resources import ResourceView
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.core.runtime import (
    ProcessSpec,
    UnitState,
    baseline_unit,
    fork_unit,
    spec_hash,
)
from laneway.core.spec import (
    LOCAL_HOST,
    ProjectSpec,
    RouteGroupSpec,
    SandboxSpec,
    interpolate,
    interpolate_resources,
)

__all__ = [
    "DesiredSandbox",
    "Plan",
    "RouteGroupEntry",
    "RouteGroupStatus",
    "SandboxStatus",
    "all_desired_forks",
    "build_routes",
    "desired_baseline",
    "desired_forks",
    "fork_blockers",
    "labels_match",
    "plan_actions",
]


@dataclass(frozen=True, slots=True)
class DesiredSandbox:
    """A stored sandbox as the planner needs it."""

    spec: SandboxSpec
    routing_key: str
    created_at: float
    generation: int = 0
    resources: Mapping[str, ResourceView] = field(default_factory=dict)

    def resource_blocker(self) -> tuple[str, bool] | None:
        """(why forks cannot start yet, whether that is a failure), or None when they can."""
        for declared in self.spec.resources:
            view = self.resources.get(declared.name)
            if view is None or view.phase in ("creating", "deleting"):
                return (f"waiting for resource {declared.name} ({declared.plugin}) to be "
                        "created", False)
            if view.phase == "failed":
                return (f"resource {declared.name} ({declared.plugin}) failed: {view.message}",
                        True)
        return None


@dataclass(frozen=True, slots=True)
class RouteGroupEntry:
    spec: RouteGroupSpec
    routing_key: str


@dataclass(slots=True)
class Plan:
    start: list[ProcessSpec] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop)


def desired_baseline(project: ProjectSpec) -> dict[str, ProcessSpec]:
    out: dict[str, ProcessSpec] = {}
    for name in project.start_order():
        svc = project.services[name]
        env = {k: interpolate(v, project) for k, v in svc.env.items()}
        env["LANEWAY_SERVICE"] = name
        out[baseline_unit(name)] = ProcessSpec(
            unit=baseline_unit(name),
            service=name,
            sandbox=None,
            argv=tuple(interpolate(a, project) for a in svc.argv()),
            env=tuple(sorted(env.items())),
            cwd=svc.cwd,
            health=svc.health,
            startup_timeout=svc.startup_timeout,
        )
    return out


def fork_blockers(sandbox: DesiredSandbox) -> dict[str, tuple[str, bool]]:
    """Forks that cannot start yet: service -> (why, whether that is a failure)."""
    blocker = sandbox.resource_blocker()
    if blocker is not None:
        return {fork.service: blocker for fork in sandbox.spec.forks}
    outputs = {name: view.outputs for name, view in sandbox.resources.items()}
    out: dict[str, tuple[str, bool]] = {}
    for fork in sandbox.spec.forks:
        try:
            for text in [*fork.env.values(), *(fork.run or [])]:
                interpolate_resources(text, outputs)
        except KeyError as exc:
            out[fork.service] = (str(exc.args[0]), True)
    return out


def desired_forks(project: ProjectSpec, sandbox: DesiredSandbox) -> dict[str, ProcessSpec]:
    """One process spec per fork that can start, its unit id carrying a digest of what makes
    it different (resource outputs included: a re-made resource means a new fork)."""
    out: dict[str, ProcessSpec] = {}
    blocked = fork_blockers(sandbox)
    outputs = {name: view.outputs for name, view in sandbox.resources.items()}
    for fork in sandbox.spec.forks:
        if fork.service in blocked:
            continue
        svc = fork.resolve(project.services[fork.service])
        env = {k: interpolate_resources(interpolate(v, project), outputs)
               for k, v in svc.env.items()}
        argv = [interpolate_resources(interpolate(a, project), outputs) for a in svc.argv()]
        digest = spec_hash(fork.service, argv, env, svc.cwd, svc.health)
        env.update(
            LANEWAY_SERVICE=fork.service,
            LANEWAY_SANDBOX=sandbox.spec.name,
            LANEWAY_ROUTING_KEY=sandbox.routing_key,
        )
        unit = fork_unit(fork.service, sandbox.spec.name, digest)
        out[unit] = ProcessSpec(
            unit=unit,
            service=fork.service,
            sandbox=sandbox.spec.name,
            argv=tuple(argv),
            env=tuple(sorted(env.items())),
            cwd=svc.cwd,
            health=svc.health,
            startup_timeout=svc.startup_timeout,
        )
    return out


ByFork = dict[tuple[str, str], list[UnitState]]


def _by_fork(actual: Mapping[str, UnitState]) -> ByFork:
    """Running fork units by (sandbox, service), built once per pass: looking each fork's
    generations up in all units made a pass quadratic in the number of sandboxes."""
    out: ByFork = {}
    for state in actual.values():
        if state.sandbox is not None:
            out.setdefault((state.sandbox, state.service), []).append(state)
    return out


def _current_and_previous(
    sandbox: str, service: str, wanted: str, actual: Mapping[str, UnitState], by_fork: ByFork
) -> tuple[UnitState | None, list[UnitState]]:
    current = actual.get(wanted)
    previous = [st for st in by_fork.get((sandbox, service), ()) if st.unit != wanted]
    return current, previous


ForksBySandbox = Mapping[str, dict[str, ProcessSpec]]


def all_desired_forks(project: ProjectSpec,
                      sandboxes: Sequence[DesiredSandbox]) -> dict[str, dict[str, ProcessSpec]]:
    """`desired_forks` of every sandbox, by name: computed once per pass and given to both
    `plan_actions` and `build_routes` (each spec costs an interpolation and a digest)."""
    return {sb.spec.name: desired_forks(project, sb) for sb in sandboxes}


def plan_actions(
    project: ProjectSpec,
    sandboxes: Sequence[DesiredSandbox],
    actual: Mapping[str, UnitState],
    forks: ForksBySandbox | None = None,
) -> Plan:
    """Start what is wanted and missing; stop what is running and no longer wanted.

    Baseline services start only once everything they depend on is ready. An updated fork is
    made before the old one is broken: the old unit keeps running (and serving) while the new
    one starts, and is stopped once the new one is ready or has failed.
    """
    plan = Plan()
    wanted: set[str] = set()
    for unit, spec in desired_baseline(project).items():
        wanted.add(unit)
        if unit in actual:
            continue
        deps = project.services[spec.service].depends_on
        if all(actual.get(baseline_unit(d)) and actual[baseline_unit(d)].phase == "ready"
               for d in deps):
            plan.start.append(spec)
    by_fork = _by_fork(actual)
    forks = forks if forks is not None else all_desired_forks(project, sandboxes)
    for sandbox in sandboxes:
        for unit, spec in forks[sandbox.spec.name].items():
            wanted.add(unit)
            current, previous = _current_and_previous(
                sandbox.spec.name, spec.service, unit, actual, by_fork
            )
            if current is None:
                plan.start.append(spec)
            # Keep the ready old generation until the new one settles (ready or failed).
            settling = current is None or current.phase == "starting"
            for old in previous:
                if settling and old.phase == "ready":
                    wanted.add(old.unit)
    plan.stop = sorted(unit for unit in actual if unit not in wanted)
    return plan


@dataclass(slots=True)
class SandboxStatus:
    ready: bool
    message: str
    forks: list[dict[str, Any]]
    generation: int = 0  # the sandbox generation this status was computed for

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "message": self.message, "forks": self.forks}


@dataclass(slots=True)
class RouteGroupStatus:
    ready: bool
    message: str
    sandboxes: list[str]
    conflicts: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "message": self.message,
            "sandboxes": self.sandboxes,
            "conflicts": self.conflicts,
        }


def _why_not_ready(state: UnitState | None, fork: str) -> str:
    if state is None:
        return f"fork {fork} is not started yet"
    if state.phase == "starting" and state.restarts:
        return f"fork {fork} is restarting ({state.restarts}), {state.message}"
    if state.phase == "starting":
        return f"fork {fork} is starting and not healthy yet"
    detail = f": {state.message}" if state.message else ""
    return f"fork {fork} is {state.phase}{detail}"


def _fork_route(
    sandbox: DesiredSandbox, spec: ProcessSpec, actual: Mapping[str, UnitState], by_fork: ByFork
) -> ForkRoute:
    name = sandbox.spec.name
    fork = f"{spec.service}@{name}"
    current, previous = _current_and_previous(name, spec.service, spec.unit, actual, by_fork)
    serving: UnitState | None = None
    if current is not None and current.phase == "ready":
        serving = current
    elif current is None or current.phase == "starting":
        serving = next((p for p in previous if p.phase == "ready"), None)
    if serving is not None and serving.port is not None:
        return ForkRoute(spec.service, name, Upstream(LOCAL_HOST, serving.port), True, "",
                         serving.unit)
    return ForkRoute(spec.service, name, None, False, _why_not_ready(current, fork), spec.unit)


def labels_match(match: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(k in labels and fnmatch.fnmatchcase(labels[k], glob) for k, glob in match.items())


def build_routes(
    version: int,
    project: ProjectSpec,
    sandboxes: Sequence[DesiredSandbox],
    groups: Sequence[RouteGroupEntry],
    actual: Mapping[str, UnitState],
    forks: ForksBySandbox | None = None,
) -> tuple[RouteTable, dict[str, SandboxStatus], dict[str, RouteGroupStatus]]:
    """The routing table and every sandbox's and route group's status, from the same facts."""
    table = RouteTable(version=version)
    for name in project.services:
        state = actual.get(baseline_unit(name))
        # Health-checked before it gets traffic: until then the router answers 503, not 502.
        if state is not None and state.port is not None and state.phase == "ready":
            table.baseline[name] = Upstream(LOCAL_HOST, state.port)
        table.forks[name] = {}
    statuses: dict[str, SandboxStatus] = {}
    routes_by_sandbox: dict[str, dict[str, ForkRoute]] = {}
    by_fork = _by_fork(actual)
    forks = forks if forks is not None else all_desired_forks(project, sandboxes)
    for sandbox in sandboxes:
        routes: dict[str, ForkRoute] = {}
        forks_json = []
        wanted = forks[sandbox.spec.name]
        for service, (reason, failed) in fork_blockers(sandbox).items():
            route = ForkRoute(service, sandbox.spec.name, None, False,
                              f"fork {service}@{sandbox.spec.name}: {reason}", "")
            routes[service] = route
            table.forks[service][sandbox.routing_key] = route
            forks_json.append({"service": service, "unit": "", "ready": False,
                               "phase": "failed" if failed else "pending",
                               "message": route.reason, "port": None, "pid": None,
                               "restarts": 0, "startedAt": None, "readyAt": None})
        for spec in wanted.values():
            route = _fork_route(sandbox, spec, actual, by_fork)
            routes[spec.service] = route
            table.forks[spec.service][sandbox.routing_key] = route
            state = actual.get(spec.unit)
            forks_json.append({
                "service": spec.service,
                "unit": spec.unit,
                "phase": state.phase if state else "pending",
                "ready": route.ready,
                "message": route.reason if not route.ready else "",
                "port": state.port if state else None,
                "pid": state.pid if state else None,
                "restarts": state.restarts if state else 0,
                # When the process was started and became healthy (wall clock), so that tools
                # can tell laneway's overhead from the process's own start-up.
                "startedAt": (state.started_at or None) if state else None,
                "readyAt": state.ready_at if state else None,
            })
        routes_by_sandbox[sandbox.spec.name] = routes
        not_ready = [r for r in routes.values() if not r.ready]
        stale = [r for r in routes.values() if r.ready and r.fork not in wanted]
        if not routes:
            statuses[sandbox.spec.name] = SandboxStatus(True, "no forks: the key routes to the "
                                                        "baseline everywhere", forks_json,
                                                        sandbox.generation)
        elif not_ready:
            statuses[sandbox.spec.name] = SandboxStatus(
                False, "; ".join(r.reason for r in not_ready), forks_json, sandbox.generation
            )
        elif stale:
            statuses[sandbox.spec.name] = SandboxStatus(
                False, "updating: " + ", ".join(f"{r.served_by} (new version starting)"
                                                for r in stale), forks_json,
                sandbox.generation,
            )
        else:
            statuses[sandbox.spec.name] = SandboxStatus(
                True, f"{len(routes)}/{len(routes)} forks ready", forks_json, sandbox.generation
            )
    group_statuses: dict[str, RouteGroupStatus] = {}
    ordered = sorted(sandboxes, key=lambda s: s.spec.name)
    for group in groups:
        members = [s for s in ordered if labels_match(group.spec.match.labels, s.spec.labels)]
        by_service: dict[str, list[str]] = {}
        for member in members:
            for service in routes_by_sandbox[member.spec.name]:
                by_service.setdefault(service, []).append(member.spec.name)
        conflicts = []
        for service, owners in sorted(by_service.items()):
            if len(owners) == 1:
                table.forks[service][group.routing_key] = routes_by_sandbox[owners[0]][service]
                continue
            # Two sandboxes fork the same service: answering from either would be a guess,
            # so the group's key gets an explicit 503 at that service until the match is fixed.
            reason = (f"route group {group.spec.name}: service {service} is forked by "
                      f"{', '.join(owners)}; narrow match.labels so one sandbox forks it")
            table.forks[service][group.routing_key] = ForkRoute(
                service, group.spec.name, None, False, reason, ""
            )
            conflicts.append({"service": service, "sandboxes": owners})
        ready_members = all(statuses[m.spec.name].ready for m in members)
        if conflicts:
            message = "; ".join(f"conflict: {c['service']} is forked by "
                                f"{', '.join(c['sandboxes'])}" for c in conflicts)
        elif not members:
            message = "no sandbox matches: the key routes to the baseline everywhere"
        else:
            message = f"{len(members)} sandboxes matched" + (
                "" if ready_members else " (some not ready)")
        group_statuses[group.spec.name] = RouteGroupStatus(
            ready=not conflicts and ready_members,
            message=message,
            sandboxes=[m.spec.name for m in members],
            conflicts=conflicts,
        )
    return table, statuses, group_statuses
