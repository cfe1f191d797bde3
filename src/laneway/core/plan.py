"""Reconcile planning: desired state and actual state in, actions and routes out.

The reconciler (control plane) calls these functions on every pass; they are pure so that the
interesting cases (an update whose new fork is still starting, a crashed fork, a route-group
conflict, a baseline that waits for its dependencies) are tested with plain data.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from laneway.core.resources import ResourceView
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.core.runtime import (
    ProcessSpec,
    UnitState,
    baseline_revision,
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
    "BaselineUnits",
    "DesiredSandbox",
    "Plan",
    "RouteGroupEntry",
    "RouteGroupStatus",
    "SandboxStatus",
    "all_desired_forks",
    "baseline_units",
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
    uid: str = ""  # the incarnation: a deleted and re-created sandbox gets a new one
    problem: str = ""  # why the stored sandbox no longer fits the baseline (it is `failed`)

    def resource_blocker(self) -> tuple[str, bool] | None:
        """(why forks cannot start yet, whether that is a failure), or None when they can."""
        if self.problem:
            return self.problem, True
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
    """Each baseline service's process spec, as `laneway.yaml` says it now, under its first
    unit name (`baseline_units` picks the name it runs under)."""
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


@dataclass(frozen=True, slots=True)
class BaselineUnits:
    """Which processes are a baseline service, decided once per pass.

    `wanted`: the spec laneway.yaml asks for, under the unit that runs (or will run) it: a
    running unit started with that very spec and not being replaced, or else a new revision
    (`pricing~1`) started beside the old one. `serving`: the unit its public port routes to,
    the wanted one once it is ready and until then the newest older one that is ready
    (make-before-break: `laneway restart`, `reload`, a daemon restarted on an edited
    laneway.yaml); None when none is ready (the router answers 503).
    """

    wanted: ProcessSpec
    serving: str | None
    others: tuple[str, ...]  # older units of the service still running

    @property
    def replacing(self) -> bool:
        return self.serving is not None and self.serving != self.wanted.unit


def _ready(state: UnitState | None) -> bool:
    return state is not None and state.phase == "ready" and state.port is not None


def baseline_units(project: ProjectSpec, actual: Mapping[str, UnitState],
                   running: Mapping[str, ProcessSpec] | None = None,
                   retiring: Collection[str] = ()) -> dict[str, BaselineUnits]:
    """`BaselineUnits` of every service of `project`, by service. `running`: the spec each
    unit was started with (None: every running unit is taken to match); `retiring`: units to
    replace even though their spec matches (`laneway restart`)."""
    units_of: dict[str, list[str]] = {}
    for unit, st in actual.items():
        if st.sandbox is None:
            units_of.setdefault(st.service, []).append(unit)
    out: dict[str, BaselineUnits] = {}
    for spec in desired_baseline(project).values():
        units = sorted(units_of.get(spec.service, ()), key=baseline_revision)
        matching = [u for u in units if u not in retiring and (
            running is None or ((ran := running.get(u)) is not None
                                and replace(ran, unit=spec.unit) == spec))]
        if matching:
            unit = matching[-1]
        elif units:
            unit = baseline_unit(spec.service, baseline_revision(units[-1]) + 1)
        else:
            unit = spec.unit
        wanted = replace(spec, unit=unit)
        ready = [u for u in units if u != unit and _ready(actual.get(u))]
        serving = unit if _ready(actual.get(unit)) else (ready[-1] if ready else None)
        out[spec.service] = BaselineUnits(wanted, serving,
                                          tuple(u for u in units if u != unit))
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
        svc = fork.resolve(project.services[fork.service], project.root)
        env = {k: interpolate_resources(interpolate(v, project), outputs)
               for k, v in svc.env.items()}
        # A fork at an address runs no command: laneway only checks and routes to it.
        argv = [] if fork.address else \
            [interpolate_resources(interpolate(a, project), outputs) for a in svc.argv()]
        # The incarnation is part of the digest: a re-created sandbox never adopts a unit (or
        # a log, or a route) of the deleted one, even with the same spec.
        digest = spec_hash(fork.service, argv or [f"address:{fork.address}"], env, svc.cwd,
                           svc.health, sandbox.uid + str(svc.startup_timeout))
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
            address=fork.address,
        )
    return out


ForksBySandbox = Mapping[str, dict[str, ProcessSpec]]


def all_desired_forks(project: ProjectSpec,
                      sandboxes: Sequence[DesiredSandbox]) -> dict[str, dict[str, ProcessSpec]]:
    """`desired_forks` of every sandbox, by name: computed once per pass and given to both
    `plan_actions` and `build_routes` (each spec costs an interpolation and a digest)."""
    return {sb.spec.name: desired_forks(project, sb) for sb in sandboxes}


@dataclass(frozen=True, slots=True)
class Serving:
    """Which units answer one sandbox's key at each service, decided once per pass.

    `switched`: every wanted fork is ready, so the key goes to exactly the spec last applied.
    Otherwise the key stays where it went before (`units`: the previous generation, taken from
    the routes the routers hold), or, for a sandbox that never served, nowhere yet (503s).
    """

    switched: bool
    units: Mapping[str, str]  # service -> unit


def _serving(sandbox: DesiredSandbox, wanted: Mapping[str, ProcessSpec],
             actual: Mapping[str, UnitState], previous: RouteTable | None) -> Serving:
    blocked = fork_blockers(sandbox)
    # A fork at an address counts once laneway watches it, up or down: it is the developer's
    # process, and while it is down its key gets a 503 that says so (never the older fork).
    if not blocked and all((st := actual.get(unit)) is not None and (
            spec.address is not None or _ready(st)) for unit, spec in wanted.items()):
        return Serving(True, {spec.service: unit for unit, spec in wanted.items()})
    # Not all ready: the sandbox keeps its previous generation (make-before-break, switched
    # for all forks at once), as long as those processes are still there. A previous unit that
    # crashed meanwhile keeps its route too (a 503 that says why), never the baseline.
    before: dict[str, str] = {}
    if previous is not None:
        for service, keys in previous.forks.items():
            route = keys.get(sandbox.routing_key)
            if route is not None and route.fork in actual and route.sandbox == sandbox.spec.name:
                before[service] = route.fork
    return Serving(False, before)


def plan_actions(
    project: ProjectSpec,
    sandboxes: Sequence[DesiredSandbox],
    actual: Mapping[str, UnitState],
    forks: ForksBySandbox | None = None,
    previous: RouteTable | None = None,
    running: Mapping[str, ProcessSpec] | None = None,
    retiring: Collection[str] = (),
    baseline: Mapping[str, BaselineUnits] | None = None,
) -> Plan:
    """Start what is wanted and missing; stop what is running and no longer wanted.

    Baseline services start only once everything they depend on is ready. An update is made
    before the old version is broken: the units that serve the sandbox now (`previous`, the
    routes the routers hold) keep running until every new fork is ready and the routes switch
    to them all at once; a failing update leaves them serving.

    A baseline service is replaced the same way (`baseline_units`): when the spec a unit was
    started with (`running`) is no longer what laneway.yaml says (`laneway reload`, a daemon
    restarted on an edited file), or the unit is `retiring` (`laneway restart`), a new
    revision starts beside it, and the old one stops once the new one is ready and the routes
    name it. A unit of a service laneway.yaml no longer has is stopped. `baseline`:
    `baseline_units` of these facts, when the caller has them already.
    """
    plan = Plan()
    wanted: set[str] = set()
    baseline = baseline if baseline is not None else baseline_units(project, actual, running,
                                                                     retiring)
    for units in baseline.values():
        spec = units.wanted
        wanted.add(spec.unit)
        if units.serving is not None:
            wanted.add(units.serving)  # until the new one is ready
        if spec.unit in actual:
            continue
        deps = project.services[spec.service].depends_on
        if all(baseline[d].serving is not None for d in deps):
            plan.start.append(spec)
    forks = forks if forks is not None else all_desired_forks(project, sandboxes)
    for sandbox in sandboxes:
        specs = forks[sandbox.spec.name]
        for unit, spec in specs.items():
            wanted.add(unit)
            if unit not in actual:
                plan.start.append(spec)
        wanted.update(_serving(sandbox, specs, actual, previous).units.values())
    plan.stop = sorted(unit for unit in actual if unit not in wanted)
    return plan


@dataclass(slots=True)
class SandboxStatus:
    ready: bool
    message: str
    forks: list[dict[str, Any]]
    generation: int = 0  # the sandbox generation this status was computed for
    failed: bool = False  # not ready because a fork (or what it needs) failed
    uid: str = ""  # the incarnation of the sandbox this status was computed for
    # Everything laneway runs is ready; only a process the developer runs (a fork at an
    # `address`) is down: waiting longer (`apply --wait`) would not change that.
    address_down: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "message": self.message, "forks": self.forks,
                **({"addressDown": True} if self.address_down else {})}


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


def _fork_route(sandbox: DesiredSandbox, service: str, unit: str,
                actual: Mapping[str, UnitState]) -> ForkRoute:
    name = sandbox.spec.name
    state = actual.get(unit)
    if state is not None and state.phase == "ready" and state.port is not None:
        return ForkRoute(service, name, Upstream(LOCAL_HOST, state.port), True, "", unit)
    return ForkRoute(service, name, None, False, _why_not_ready(state, f"{service}@{name}"),
                     unit)


def _fork_json(fork: str, unit: str, state: UnitState | None,
               route: ForkRoute | None) -> dict[str, Any]:
    ready = bool(state and state.phase == "ready")
    return {
        "service": fork.partition("@")[0],
        "unit": unit,
        "phase": state.phase if state else "pending",
        "ready": ready,
        "serving": bool(route and route.ready and route.fork == unit),  # gets the key now
        "message": "" if ready else _why_not_ready(state, fork),
        "port": state.port if state else None,
        "pid": state.pid if state else None,
        "restarts": state.restarts if state else 0,
        "lastFailure": state.last_failure if state else "",  # why it last went down
        # When the process was started and became healthy (wall clock), so that tools can
        # tell laneway's overhead from the process's own start-up.
        "startedAt": (state.started_at or None) if state else None,
        "readyAt": state.ready_at if state else None,
    }


def _failed_sandbox(project: ProjectSpec,
                    sandbox: DesiredSandbox) -> tuple[dict[str, ForkRoute], SandboxStatus]:
    """A sandbox that no longer fits the baseline: every fork it has there answers 503 with
    why (never the baseline), nothing starts."""
    name = sandbox.spec.name
    reason = f"sandbox {name} is failed: {sandbox.problem}"
    routes = {f.service: ForkRoute(f.service, name, None, False, reason, "")
              for f in sandbox.spec.forks if f.service in project.services}
    forks_json: list[dict[str, Any]] = [
        {"service": f.service, "unit": "", "ready": False, "serving": False, "phase": "failed",
         "message": reason, "port": None, "pid": None, "restarts": 0, "lastFailure": "",
         "startedAt": None, "readyAt": None}
        for f in sandbox.spec.forks]
    return routes, SandboxStatus(False, sandbox.problem, forks_json, sandbox.generation,
                                 failed=True, uid=sandbox.uid)


def _sandbox_routes(project: ProjectSpec, sandbox: DesiredSandbox,
                    wanted: Mapping[str, ProcessSpec], actual: Mapping[str, UnitState],
                    previous: RouteTable | None) -> tuple[dict[str, ForkRoute], SandboxStatus]:
    """One sandbox's routes (service -> route) and status, from its `Serving` decision."""
    name = sandbox.spec.name
    if sandbox.problem:
        return _failed_sandbox(project, sandbox)
    serving = _serving(sandbox, wanted, actual, previous)
    by_service = {spec.service: unit for unit, spec in wanted.items()}
    blocked = {service: why for service, why in fork_blockers(sandbox).items()
               if service in project.services}
    routes: dict[str, ForkRoute] = {}
    older = any(unit not in wanted for unit in serving.units.values())
    for service, unit in serving.units.items():
        routes[service] = _fork_route(sandbox, service, unit, actual)
    if not older:
        # Nothing older serves: a fork that is not ready answers 503 and says why.
        for service, (reason, _) in blocked.items():
            routes.setdefault(service, ForkRoute(service, name, None, False,
                                                 f"fork {service}@{name}: {reason}", ""))
        for service, unit in by_service.items():
            routes.setdefault(service, _fork_route(sandbox, service, unit, actual))
    forks_json = [_fork_json(f"{service}@{name}", unit, actual.get(unit), routes.get(service))
                  for service, unit in by_service.items()]
    for service, (reason, failed) in fork_blockers(sandbox).items():
        forks_json.append({"service": service, "unit": "", "ready": False, "serving": False,
                           "phase": "failed" if failed else "pending",
                           "message": f"fork {service}@{name}: {reason}", "port": None,
                           "pid": None, "restarts": 0, "lastFailure": "", "startedAt": None,
                           "readyAt": None})
    generation = sandbox.generation
    uid = sandbox.uid
    if not wanted and not blocked:
        return routes, SandboxStatus(True, "no forks: the key routes to the baseline "
                                     "everywhere", forks_json, generation, uid=uid)
    down = [_why_not_ready(actual.get(unit), f"{spec.service}@{name}")
            for unit, spec in wanted.items() if spec.address is not None
            and not ((st := actual.get(unit)) and st.phase == "ready")]
    if serving.switched and not down:
        count = len(wanted)
        return routes, SandboxStatus(True, f"{count}/{count} forks ready", forks_json,
                                     generation, uid=uid)
    if serving.switched:
        # Known down once checked at least once (not while the first check is under way).
        checked = all((st := actual.get(unit)) is not None and st.phase != "starting"
                      for unit, spec in wanted.items() if spec.address is not None)
        return routes, SandboxStatus(False, "; ".join(down), forks_json, generation, uid=uid,
                                     address_down=checked)
    problems = [f"fork {service}@{name}: {reason}" for service, (reason, _) in blocked.items()]
    problems += [_why_not_ready(actual.get(unit), f"{service}@{name}")
                 for service, unit in by_service.items()
                 if not ((st := actual.get(unit)) and st.phase == "ready")]
    failed = any(f["phase"] in ("crashed", "unhealthy", "failed") for f in forks_json)
    if older:
        old = ", ".join(sorted(f"{s}@{name}" for s, u in serving.units.items()
                               if u not in wanted))
        what = "update failed" if failed else "updating"
        message = (f"{what}: {'; '.join(problems)}; the previous version ({old}) keeps "
                   "serving the key until every new fork is ready")
    else:
        message = "; ".join(problems)
    return routes, SandboxStatus(False, message, forks_json, generation, failed=failed,
                                 uid=uid)


def labels_match(match: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(k in labels and fnmatch.fnmatchcase(labels[k], glob) for k, glob in match.items())


def build_routes(
    version: int,
    project: ProjectSpec,
    sandboxes: Sequence[DesiredSandbox],
    groups: Sequence[RouteGroupEntry],
    actual: Mapping[str, UnitState],
    forks: ForksBySandbox | None = None,
    previous: RouteTable | None = None,
    captured: Iterable[str] = (),
    baseline: Mapping[str, BaselineUnits] | None = None,
) -> tuple[RouteTable, dict[str, SandboxStatus], dict[str, RouteGroupStatus]]:
    """The routing table and every sandbox's and route group's status, from the same facts.

    `previous` is the table the routers hold now: a sandbox whose new forks are not all ready
    keeps the units it routes to there (see `plan_actions`). `captured`: keys captured besides
    those of sandboxes with `capture: true` (the keys of runs with `--capture`). `baseline`:
    `baseline_units` of this pass (computed here when not given)."""
    table = RouteTable(version=version)
    table.captured = frozenset(captured) | {s.routing_key for s in sandboxes if s.spec.capture}
    table.names = {s.spec.name: s.routing_key for s in sandboxes}
    table.names.update({g.spec.name: g.routing_key for g in groups})
    baseline = baseline if baseline is not None else baseline_units(project, actual)
    for name in project.services:
        # Health-checked before it gets traffic: until then the router answers 503, not 502.
        serving = baseline[name].serving
        state = actual.get(serving) if serving is not None else None
        if state is not None and state.port is not None:
            table.baseline[name] = Upstream(LOCAL_HOST, state.port)
        table.forks[name] = {}
    statuses: dict[str, SandboxStatus] = {}
    routes_by_sandbox: dict[str, dict[str, ForkRoute]] = {}
    forks = forks if forks is not None else all_desired_forks(project, sandboxes)
    for sandbox in sandboxes:
        wanted = forks[sandbox.spec.name]
        routes, status = _sandbox_routes(project, sandbox, wanted, actual, previous)
        for service, route in routes.items():
            table.forks[service][sandbox.routing_key] = route
        routes_by_sandbox[sandbox.spec.name] = routes
        statuses[sandbox.spec.name] = status
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
