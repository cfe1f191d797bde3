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
from collections.abc import Mapping
from typing import Any

from laneway.control.errors import Conflict, Invalid, NotFound
from laneway.control.hoplog import HopLog
from laneway.control.resources import ResourceManager
from laneway.control.store import AuditEntry, Kind, Record, Store
from laneway.core.feed import RoutesBroadcaster
from laneway.core.keys import new_routing_key
from laneway.core.plan import (
    DesiredSandbox,
    RouteGroupEntry,
    RouteGroupStatus,
    SandboxStatus,
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
        Checked once per version of the record (every pass and every view asks; the
        baseline does not change while the daemon runs)."""
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

    def services(self) -> list[dict[str, Any]]:
        states = self.runtime.states()
        out = []
        for name, svc in self.project.services.items():
            state = states.get(name)
            out.append({
                "name": name,
                "url": service_url(svc.port),
                "port": svc.port,
                "protocol": svc.protocol,
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
            })
        return out

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
