"""The control plane's operations: apply, get, list and delete sandboxes and route groups.

The API calls these; they validate (every problem with its field path), write the store and the
audit log, and wake the reconciler. They never touch processes: the reconciler converges the
runtime to what the store says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

from laneway.control.errors import Conflict, Invalid, NotFound
from laneway.control.resources import ResourceManager
from laneway.control.store import AuditEntry, Kind, Record, Store
from laneway.core.feed import RoutesBroadcaster
from laneway.core.hoplog import HopLog
from laneway.core.keys import new_routing_key
from laneway.core.plan import (
    BaselineUnits,
    DesiredSandbox,
    RouteGroupEntry,
    RouteGroupStatus,
    SandboxStatus,
    baseline_units,
    desired_baseline,
    desired_forks,
    fork_blockers,
)
from laneway.core.preview import preview_url
from laneway.core.runtime import Runtime
from laneway.core.spec import (
    ForkSpec,
    ProjectSpec,
    RouteGroupSpec,
    SandboxSpec,
    SpecError,
    check_sandbox_against_project,
    parse_address,
    parse_route_group,
    parse_sandbox,
    service_url,
)

__all__ = ["ControlPlane"]


def _invalid(exc: SpecError) -> Invalid:
    first = exc.issues[0] if exc.issues else ("", "invalid")
    return Invalid(exc.render(), field=first[0], errors=exc.issues)


def _spec_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What an update changed, as the lines of a unified diff of the two specs in YAML."""
    import difflib

    import yaml

    old = yaml.safe_dump(dict(before), sort_keys=True).splitlines()
    new = yaml.safe_dump(dict(after), sort_keys=True).splitlines()
    return list(difflib.unified_diff(old, new, "before", "after", n=1, lineterm=""))[2:]


def _named(data: Mapping[str, Any], name: str | None) -> dict[str, Any]:
    """The body with the URL's name in it; a body naming something else is refused."""
    body = dict(data)
    if name is not None:
        if body.get("name", name) != name:
            raise Invalid(f"name: the body names {body.get('name')!r} but the URL names "
                          f"{name!r}", field="name",
                          errors=[("name", "must match the name in the URL")])
        body["name"] = name
    return body


class ControlPlane:
    def __init__(self, project: ProjectSpec, store: Store, runtime: Runtime,
                 feed: RoutesBroadcaster, hops: HopLog) -> None:
        self.project = project
        self.store = store
        self.runtime = runtime
        self.feed = feed
        self.hops = hops
        self.started_at = time.time()
        self.sandbox_status: dict[str, SandboxStatus] = {}
        self.group_status: dict[str, RouteGroupStatus] = {}
        self.passes = 0
        self.reconcile_error = ""  # why the last reconcile pass failed, while it retries
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # set after every reconcile pass
        self._parsed: dict[tuple[str, str, str, int], Any] = {}
        # name -> ((incarnation, generation), (spec, problem)): see `_checked_spec`.
        self._checked: dict[str, tuple[tuple[str, int], tuple[SandboxSpec, str]]] = {}
        self.resources: ResourceManager | None = None  # set by the daemon when plugins exist
        self.preview_port: int | None = None  # the preview edge's (set by the daemon), if any
        # Keys captured for runs with `--capture` (a count: two runs may share a key); the
        # keys of sandboxes with `capture: true` come from their specs.
        self.captured_keys: Counter[str] = Counter()
        # Baseline units to replace although laneway.yaml did not change (`laneway restart`);
        # the reconciler forgets each once it has stopped.
        self.retiring: set[str] = set()
        self.baseline: Mapping[str, BaselineUnits] = {}  # the last pass's `baseline_units`
        # Reads laneway.yaml again (set by the daemon): `reload`.
        self.load_project: Callable[[], ProjectSpec] | None = None

    # the reconciler's side

    def wake(self) -> None:
        self._wake.set()

    async def wait_for_wake(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def pass_done(self) -> None:
        self.passes += 1
        self._settled.set()
        self._settled = asyncio.Event()

    async def next_pass(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)

    async def capture(self, key: str, timeout: float = 5.0) -> None:
        """Capture `key`'s requests until `release(key)`; returns once the routers have the
        table that says so (or after `timeout`: the capture then starts a little late)."""
        self.captured_keys[key] += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            published = self.runtime.routes
            if published is not None and key in published.captured:
                return
            self.wake()
            await self.next_pass(min(1.0, max(0.0, deadline - time.monotonic())))

    def release(self, key: str) -> None:
        self.captured_keys[key] -= 1
        if self.captured_keys[key] <= 0:
            del self.captured_keys[key]
        self.wake()

    def desired_sandboxes(self) -> list[DesiredSandbox]:
        out = []
        for rec in self.store.records("sandbox"):
            views = self.resources.views(rec.name) if self.resources else {}
            spec, problem = self._checked_spec(rec)
            out.append(DesiredSandbox(spec, rec.routing_key, rec.created_at, rec.generation,
                                      views, uid=rec.uid, problem=problem))
        return out

    def _checked_spec(self, rec: Record) -> tuple[SandboxSpec, str]:
        """The stored spec and, when it no longer fits the baseline (laneway.yaml changed
        since it was applied), why: the sandbox is then `failed`, never a reason to stop.
        Checked once per version of the record (every pass and every view asks); `reload`
        forgets every check, since the baseline they were made against has changed."""
        version = (rec.uid, rec.generation)
        cached = self._checked.get(rec.name)
        if cached is None or cached[0] != version:
            cached = self._checked[rec.name] = (version, self._check(rec))
        return cached[1]

    def _check(self, rec: Record) -> tuple[SandboxSpec, str]:
        try:
            spec = self._parsed_spec(rec)
            assert isinstance(spec, SandboxSpec)
        except SpecError as exc:
            return parse_sandbox({"name": rec.name}), (
                f"the stored spec is no longer valid ({exc.render()}); re-apply it fixed "
                f"(`laneway sandbox apply -f ...`) or delete it (`laneway sandbox delete "
                f"{rec.name}`)")
        try:
            check_sandbox_against_project(spec, self.project)
        except SpecError as exc:
            gone = [f.service for f in spec.forks if f.service not in self.project.services]
            what = (f"it forks {', '.join(repr(g) for g in gone)}, no longer a service of "
                    "laneway.yaml" if gone else
                    f"it no longer fits laneway.yaml ({exc.render()})")
            return spec, (f"{what}; re-apply it without that fork (`laneway sandbox apply "
                          f"-f ...`) or delete it (`laneway sandbox delete {rec.name}`)")
        return spec, ""

    def desired_groups(self) -> list[RouteGroupEntry]:
        out = []
        for rec in self.store.records("routegroup"):
            spec = self._parsed_spec(rec)
            assert isinstance(spec, RouteGroupSpec)
            out.append(RouteGroupEntry(spec, rec.routing_key))
        return out

    def _parsed_spec(self, rec: Record) -> Any:
        # Keyed by the incarnation too: a sandbox deleted and re-created under the same name
        # starts again at generation 1, and must never be given the deleted one's spec.
        key = (rec.kind, rec.name, rec.uid, rec.generation)
        spec = self._parsed.get(key)
        if spec is None:
            spec = (parse_sandbox(rec.spec) if rec.kind == "sandbox"
                    else parse_route_group(rec.spec))
            self._parsed = {k: v for k, v in self._parsed.items() if k[:2] != key[:2]}
            self._parsed[key] = spec
        return spec

    # operations

    @staticmethod
    def _entry(principal: str, action: str, kind: Kind, name: str,
               detail: Mapping[str, Any] | None = None) -> AuditEntry:
        """The audit entry of a mutation, written in the same transaction as the mutation."""
        return AuditEntry(time.time(), principal, action, kind, name, dict(detail or {}))

    def _new_key(self) -> str:
        while True:
            key = new_routing_key()
            if not self.store.key_in_use(key):
                return key

    def apply_sandbox(self, data: Mapping[str, Any], *, name: str | None = None,
                      principal: str = "local", dry_run: bool = False,
                      create_only: bool = False,
                      if_generation: int | None = None) -> tuple[dict[str, Any], bool]:
        """Create or update a sandbox by name; returns (view, created). The view says what
        changed (`change`: created, updated or unchanged; `specDiff` for an update).
        `dry_run`: validate only (every check an apply makes), store nothing. `create_only`:
        refuse to replace one that exists; `if_generation`: refuse unless the sandbox is at
        that generation (0: does not exist), as Kubernetes' resourceVersion."""
        data = _named(data, name)
        try:
            spec = parse_sandbox(data)
            check_sandbox_against_project(spec, self.project)
            existing = self.store.get("sandbox", spec.name)
            if spec.resources and self.resources is None:
                raise SpecError([("resources", "this control plane has no resource plugins")])
            if self.resources is not None:
                previous = self._checked_spec(existing)[0] if existing else None
                self.resources.validate(spec, previous)
        except SpecError as exc:
            raise _invalid(exc) from exc
        current = existing.generation if existing is not None else 0
        if create_only and existing is not None:
            raise Conflict(f"sandbox {spec.name!r} exists already (generation {current}); "
                           "nothing was changed. Drop --create-only to update it, or choose "
                           "another name")
        if if_generation is not None and if_generation != current:
            raise Conflict(
                f"sandbox {spec.name!r} is at generation {current}, not {if_generation}: "
                "it was changed (or created, or deleted) since you read it; nothing was "
                "changed. Read it again (`laneway sandbox get`) and apply on top of that")
        if dry_run:
            return {"name": spec.name, "dryRun": True, "valid": True}, existing is None
        now = time.time()
        stored = spec.model_dump(mode="json", exclude_defaults=True, by_alias=True)
        expires = now + spec.ttl if spec.ttl else None
        if existing is None:
            record = Record("sandbox", spec.name, stored, self._new_key(), now, now, 1, expires)
            created = True
        else:
            changed = existing.spec != stored
            record = Record("sandbox", spec.name, stored, existing.routing_key,
                            existing.created_at, now,
                            existing.generation + (1 if changed else 0), expires,
                            uid=existing.uid)
            created = False
        self.store.put_with_audit(record, self._entry(
            principal, "create" if created else "update", "sandbox", spec.name,
            {"generation": record.generation}))
        self.wake()
        view = self.sandbox_view(record)
        if created:
            view["change"] = "created"
        elif existing is not None and existing.spec != stored:
            view["change"] = "updated"
            view["specDiff"] = _spec_diff(existing.spec, stored)
        else:
            view["change"] = "unchanged"
        return view, created

    def sandbox_view(self, rec: Record) -> dict[str, Any]:
        spec, _ = self._checked_spec(rec)
        status = self.sandbox_status.get(rec.name)
        status_json: dict[str, Any]
        if status is None or status.generation != rec.generation or status.uid != rec.uid:
            # Not reconciled since this version (or this incarnation) was applied: an older
            # status would be stale, and `--wait` would return before the routes switched.
            status_json = {"ready": False, "phase": "pending",
                           "message": "waiting for the reconciler", "forks": []}
        else:
            status_json = {**status.to_json(),
                           "phase": "ready" if status.ready else
                           ("failed" if status.failed else "pending")}
        return {
            "name": rec.name,
            "routingKey": rec.routing_key,
            "labels": spec.labels,
            "ttl": spec.ttl,
            "capture": spec.capture,
            "expiresAt": rec.expires_at,
            "createdAt": rec.created_at,
            "updatedAt": rec.updated_at,
            "generation": rec.generation,
            "forks": [
                {"service": f.service, **({"run": f.run_line or list(f.run)} if f.run else {}),
                 **({"env": f.env} if f.env else {}),
                 **{k: v for k in ("address", "cwd", "health", "startup_timeout", "shell")
                    if (v := getattr(f, k)) is not None}}
                for f in spec.forks
            ],
            "resources": [{"name": r.name, "plugin": r.plugin, "params": r.params}
                          for r in spec.resources],
            "previews": self.previews(rec.name),
            "status": {**status_json,
                       "resources": self.resources.status(rec.name) if self.resources else []},
        }

    def previews(self, name: str) -> dict[str, str]:
        """Preview URLs of sandbox or route group `name`: one per service a browser can open
        (HTTP/1.1 services; gRPC and h2c-only ones are not pages)."""
        if self.preview_port is None:
            return {}
        services = self.project.services
        called = {dep for svc in services.values() for dep in svc.depends_on}
        # Entry points (services no other one depends on: what users open) first.
        order = sorted(services, key=lambda s: (s in called, s))
        return {service: preview_url(name, service, self.preview_port)
                for service in order if services[service].protocol == "http"}

    def get_sandbox(self, name: str) -> dict[str, Any]:
        rec = self.store.get("sandbox", name)
        if rec is None:
            raise NotFound(f"sandbox {name!r} not found; `laneway sandbox list` shows the "
                           "sandboxes there are")
        return self.sandbox_view(rec)

    def list_sandboxes(self) -> list[dict[str, Any]]:
        return [self.sandbox_view(r) for r in self.store.records("sandbox")]

    def delete_sandbox(self, name: str, *, principal: str = "local",
                       reason: str = "delete") -> None:
        if not self.store.delete_with_audit("sandbox", name, self._entry(
                principal, reason, "sandbox", name)):
            raise NotFound(f"sandbox {name!r} not found")
        self.sandbox_status.pop(name, None)
        self._checked.pop(name, None)
        self.wake()

    def apply_route_group(self, data: Mapping[str, Any], *, name: str | None = None,
                          principal: str = "local") -> tuple[dict[str, Any], bool]:
        data = _named(data, name)
        try:
            spec = parse_route_group(data)
        except SpecError as exc:
            raise _invalid(exc) from exc
        now = time.time()
        stored = spec.model_dump(mode="json", exclude_defaults=True)
        existing = self.store.get("routegroup", spec.name)
        if existing is None:
            record = Record("routegroup", spec.name, stored, self._new_key(), now, now)
            created = True
        else:
            record = Record("routegroup", spec.name, stored, existing.routing_key,
                            existing.created_at, now,
                            existing.generation + (existing.spec != stored), uid=existing.uid)
            created = False
        self.store.put_with_audit(record, self._entry(
            principal, "create" if created else "update", "routegroup", spec.name))
        self.wake()
        return self.route_group_view(record), created

    def route_group_view(self, rec: Record) -> dict[str, Any]:
        spec = self._parsed_spec(rec)
        assert isinstance(spec, RouteGroupSpec)
        status = self.group_status.get(rec.name)
        return {
            "name": rec.name,
            "routingKey": rec.routing_key,
            "labels": spec.labels,
            "match": {"labels": spec.match.labels},
            "previews": self.previews(rec.name),
            "createdAt": rec.created_at,
            "updatedAt": rec.updated_at,
            "status": status.to_json() if status else {
                "ready": False, "message": "waiting for the reconciler", "sandboxes": [],
                "conflicts": []},
        }

    def get_route_group(self, name: str) -> dict[str, Any]:
        rec = self.store.get("routegroup", name)
        if rec is None:
            raise NotFound(f"route group {name!r} not found; `laneway routegroup list` shows "
                           "the route groups there are")
        return self.route_group_view(rec)

    def list_route_groups(self) -> list[dict[str, Any]]:
        return [self.route_group_view(r) for r in self.store.records("routegroup")]

    def delete_route_group(self, name: str, *, principal: str = "local") -> None:
        if not self.store.delete_with_audit("routegroup", name, self._entry(
                principal, "delete", "routegroup", name)):
            raise NotFound(f"route group {name!r} not found")
        self.group_status.pop(name, None)
        self.wake()

    # reading

    def _baseline_units(self) -> Mapping[str, BaselineUnits]:
        if set(self.baseline) == set(self.project.services):
            return self.baseline
        # Before the first pass (or right after a reload): the same decision, made now.
        return baseline_units(self.project, self.runtime.states(),
                              self.runtime.running_specs(), self.retiring)

    def services(self) -> list[dict[str, Any]]:
        states = self.runtime.states()
        units = self._baseline_units()
        out = []
        for name, svc in self.project.services.items():
            decided = units[name]  # every service of the project has its decision
            unit = decided.serving or decided.wanted.unit
            state = states.get(unit)
            view: dict[str, Any] = {
                "name": name,
                "url": service_url(svc.port),
                "port": svc.port,
                "protocol": svc.protocol,
                "unit": unit,
                "phase": state.phase if state else "pending",
                "ready": bool(state and state.phase == "ready"),
                "message": state.message if state else "waiting for its dependencies",
                "pid": state.pid if state else None,
                "internalPort": state.port if state else None,
                "restarts": state.restarts if state else 0,
                # Unexpected exceptions met while supervising it (each logged once per cause).
                "supervisionErrors": state.errors if state else 0,
                "lastFailure": state.last_failure if state else "",
                "dependsOn": list(svc.depends_on),
                "replacing": None,
            }
            if decided.replacing:
                # A new process (restart, reload) starts beside the one that serves.
                new = states.get(decided.wanted.unit)
                # Failed once is failed: between two attempts the new process is "starting"
                # again, and a replacement that never got healthy must not read as in progress
                # then (it is serving nothing; the old process serves).
                failed = bool(new and (new.failed or new.last_failure))
                view["replacing"] = {
                    "unit": decided.wanted.unit,
                    "phase": new.phase if new else "pending",
                    "pid": new.pid if new else None,
                    "failed": failed,
                    "message": new.message if new else "waiting for its dependencies",
                }
                what = "failed" if failed else "in progress"
                view["message"] = (f"replacement {what} ({decided.wanted.unit}: "
                                   f"{view['replacing']['message']}); pid {view['pid']} keeps "
                                   "serving until it is ready")
            out.append(view)
        return out

    def restart(self, service: str, *, principal: str = "local") -> dict[str, Any]:
        """Replace `service`'s baseline process make-before-break: a new one starts beside
        it, gets the traffic once it is healthy, and the old one then finishes the requests it
        has and stops. A failing new process never takes the traffic (status says why)."""
        if service not in self.project.services:
            raise NotFound(f"service {service!r} not found; services: "
                           f"{', '.join(self.project.services)}")
        states = self.runtime.states()
        old = sorted(u for u, st in states.items() if st.sandbox is None and st.service == service)
        self.retiring.update(old)
        self.store.audit(AuditEntry(time.time(), principal, "restart", "service", service,
                                    {"units": old}))
        self.wake()
        return {"service": service, "replacing": old}

    async def reload(self, project: ProjectSpec | None = None, *, principal: str = "local",
                     dry_run: bool = False) -> dict[str, Any]:
        """Make `project` (laneway.yaml read again) the baseline: changed services are replaced
        make-before-break, new ones start, removed ones stop once the sandboxes that fork them
        are `failed` with the reason. Public ports move first; a port that cannot be had
        leaves everything as it was (409). What only a new data plane can change (router
        settings, `ports`) is named in `restartNeeded` and left as it is. `project`: None
        reads laneway.yaml again (`load_project`); an invalid file changes nothing (422)."""
        if project is None:
            if self.load_project is None:
                raise Conflict("this control plane has no laneway.yaml to read again")
            try:
                project = self.load_project()
            except SpecError as exc:
                raise _invalid(exc) from exc
        before, after = self.project, project
        old_specs = {s.service: s for s in desired_baseline(before).values()}
        new_specs = {s.service: s for s in desired_baseline(after).values()}
        changes: dict[str, list[str]] = {}
        for name, svc in after.services.items():
            if name not in before.services:
                continue
            was = before.services[name].model_dump()
            now = svc.model_dump()
            fields = sorted(k for k in now if now[k] != was.get(k))
            if old_specs[name] != new_specs[name] and not fields:
                fields = ["env"]  # an interpolation changed (a port another service moved)
            if fields:
                changes[name] = fields
        added = [n for n in after.services if n not in before.services]
        removed = [n for n in before.services if n not in after.services]
        affected = []
        for rec in self.store.records("sandbox"):
            spec, _ = self._checked_spec(rec)
            gone = sorted({f.service for f in spec.forks} & set(removed))
            if gone:
                affected.append({"name": rec.name, "forks": gone})
        restart_needed = [field for field in ("name", "router", "ports")
                          if getattr(before, field) != getattr(after, field)]
        summary = {
            "changed": [{"service": n, "fields": f} for n, f in changes.items()],
            "added": added, "removed": removed,
            "unchanged": [n for n in after.services if n not in changes and n not in added],
            "sandboxesFailed": affected, "restartNeeded": restart_needed,
            "dryRun": dry_run,
        }
        if dry_run:
            return summary
        listen = getattr(self.runtime, "listen", None)
        if listen is not None:
            try:
                await listen(*after.listeners())
            except Exception as exc:
                # Put the listeners back as they were: nothing of the reload is applied.
                with contextlib.suppress(Exception):
                    await listen(*before.listeners())
                raise Conflict(f"laneway.yaml was not reloaded: {exc}; nothing was "
                               "changed") from exc
            self.preview_port = getattr(self.runtime, "preview_port", self.preview_port)
        self.project = after
        self._checked.clear()
        self.baseline = {}
        self.store.audit(AuditEntry(time.time(), principal, "reload", "project", after.name,
                                    {k: summary[k] for k in ("changed", "added", "removed")}))
        self.wake()
        return summary

    def settled(self, services: Collection[str] | None = None) -> tuple[str, str]:
        """Whether the baseline (of `services`; None: all) is as laneway.yaml says: `done`
        (every service ready on the process it wants, nothing older left running), `failed`
        (a new process crashed or is unhealthy: the old one, if any, keeps serving) or
        `waiting`; and a sentence on what is still going on or went wrong."""
        units = self._baseline_units()
        waiting, failed = [], []
        for view in self.services():
            name = view["name"]
            if services is not None and name not in services:
                continue
            replacing = view["replacing"]
            if (replacing and replacing["failed"]) or (not replacing and (
                    view["phase"] in ("crashed", "unhealthy")
                    or (not view["ready"] and view["lastFailure"]))):
                failed.append(f"{name}: {view['message']}")
            elif replacing or not view["ready"]:
                waiting.append(f"{name}: {view['message']}")
            elif units[name].others:
                waiting.append(f"{name}: the previous process is finishing its requests")
        extra = sorted(u for u, st in self.runtime.states().items()
                       if st.sandbox is None and st.service not in self.project.services)
        if extra:
            waiting.append(f"stopping {', '.join(extra)} (no longer in laneway.yaml)")
        if failed:
            return "failed", "; ".join(failed)
        return ("waiting", "; ".join(waiting)) if waiting else ("done", "")

    def status(self) -> dict[str, Any]:
        services = self.services()
        sandboxes = self.list_sandboxes()
        return {
            "name": self.project.name,
            "startedAt": self.started_at,
            "ready": all(s["ready"] for s in services),
            "services": services,
            "sandboxes": [{"name": s["name"], "routingKey": s["routingKey"],
                           "ready": s["status"]["ready"], "phase": s["status"]["phase"],
                           "message": s["status"]["message"],
                           "forks": [f["service"] for f in s["forks"]]} for s in sandboxes],
            "routeGroups": [{"name": g["name"], "routingKey": g["routingKey"],
                             "ready": g["status"]["ready"], "message": g["status"]["message"]}
                            for g in self.list_route_groups()],
            "routes": {"version": self.feed.version},
            "preview": None if self.preview_port is None else {
                "port": self.preview_port,
                "url": f"http://<sandbox>--<service>.localhost:{self.preview_port}/"},
            # Why the last reconcile pass failed while it retries with backoff ("" when fine).
            "reconcileError": self.reconcile_error,
            "hops": {"stored": len(self.hops), "received": self.hops.received},
        }

    def keys_of_sandbox(self, name: str) -> set[str]:
        """The sandbox's key and the keys of route groups that include it."""
        rec = self.store.get("sandbox", name)
        if rec is None:
            raise NotFound(f"sandbox {name!r} not found")
        keys = {rec.routing_key}
        for group in self.store.records("routegroup"):
            status = self.group_status.get(group.name)
            if status and name in status.sandboxes:
                keys.add(group.routing_key)
        return keys

    def fork_env(self, sandbox: str, service: str) -> dict[str, Any]:
        """The environment laneway gives (or would give) `service` forked in `sandbox`: the
        baseline's env with the fork's overrides, interpolated, the sandbox's variables, and
        `PORT` (a fork at an address: its port). For `laneway sandbox env` and `exec`."""
        rec = self.store.get("sandbox", sandbox)
        if rec is None:
            raise NotFound(f"sandbox {sandbox!r} not found; `laneway sandbox list` shows the "
                           "sandboxes there are")
        if service not in self.project.services:
            raise NotFound(f"service {service!r} not found; services: "
                           f"{', '.join(self.project.services)}")
        spec, _ = self._checked_spec(rec)
        fork = next((f for f in spec.forks if f.service == service), None)
        unit = self.unit_of_fork(sandbox, service)
        running = self.runtime.running_specs().get(unit) if unit else None
        if running is None:
            # Not running (not forked yet, or waiting): what the planner would start for it.
            forks = spec.forks if fork is not None else [*spec.forks, ForkSpec(service=service)]
            desired = DesiredSandbox(
                spec.model_copy(update={"forks": forks}), rec.routing_key, rec.created_at,
                rec.generation, self.resources.views(sandbox) if self.resources else {},
                uid=rec.uid)
            running = next((p for p in desired_forks(self.project, desired).values()
                            if p.service == service), None)
            if running is None:
                reason = fork_blockers(desired).get(service, ("it cannot start yet", False))[0]
                raise Conflict(f"fork {service}@{sandbox} has no environment yet: {reason}")
        env = dict(running.env)
        cwd, run = running.cwd, list(running.argv)
        address = fork.address if fork is not None else None
        port = parse_address(address)[1] if address else None
        env.update(getattr(self.runtime, "unit_env", {}))
        if port is not None:
            env["PORT"] = str(port)
        return {"sandbox": sandbox, "service": service, "routingKey": rec.routing_key,
                "forked": fork is not None, "address": address, "port": port,
                "cwd": cwd, "run": [] if address else run, "env": dict(sorted(env.items()))}

    def unit_of_fork(self, sandbox: str, service: str) -> str | None:
        states = self.runtime.states()
        status = self.sandbox_status.get(sandbox)
        if status:
            for fork in status.forks:
                if fork["service"] == service:
                    unit = str(fork["unit"])
                    if unit in states or self.runtime.log_path(unit) is not None:
                        return unit
        return None
