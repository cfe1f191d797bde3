"""A Kubernetes API server for tests: KMock's emulator (kopf's author's, written for testing
operators over real HTTP), with what laneway's operator relies on that a real API server does
and KMock's emulator leaves to its users ("inherit and implement for your cases"):

- label selectors (`=`, `!=`, `key`, `!key`) on lists and watches;
- `PUT` replaces an object; `PATCH` by its content type: JSON merge patch (RFC 7386),
  strategic merge (built-in kinds only: lists of named items merge by `name`, as containers,
  env, ports and volumes do; a custom resource gets the real server's 415), JSON patch;
- the `status` subresource (only status changes through it, and status never through the
  main resource, for the kinds that have one);
- what the server sets: `uid`, `resourceVersion` (one counter for every write), `generation`
  (moves when the spec does), `creationTimestamp`, the namespace from the URL;
- deletion with finalizers (`deletionTimestamp`, deleted once the last finalizer goes), and
  garbage collection of the objects whose `ownerReferences` name a deleted owner;
- TokenReview: the tokens given to `tokens` are authenticated for their audiences (a review
  naming none asks for the server's own), as the user `users` names (a ServiceAccount's by
  default); SubjectAccessReview: allowed, but for the (user, verb, namespace) in `denied`;
- Services get a cluster IP from `service_ips` (loopback in tests whose "pods" are processes);
- faults on demand: `fail_next[(method, plural)] = n` answers the next n such writes with a
  500, as an API server having a bad moment does.

The discovery endpoints, the storage with history (`objects`), the watch streams' buses and
the error bodies (`kind: Status`) are KMock's.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import enums, rendering  # the request's parsed fields

__all__ = ["ApiServer", "selector_matches"]

_BUILTIN_STATUS = {("apps", "deployments"), ("", "pods")}


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy a label selector (equality and existence terms)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.strip().rstrip("=")) != value.strip().lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _merged(target: Any, patch: dict[str, Any], merge: Callable[[Any, Any], Any]) -> Any:
    """A patch's mapping over `target`: `null` removes a key, other values are `merge`d."""
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, `null` removes a key, anything else (lists too) replaces."""
    if isinstance(patch, dict):
        return _merged(target, patch, merge_patch)
    return copy.deepcopy(patch)


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge as the API server does it for the lists laneway patches: lists of
    mappings with a `name` merge item by item (new items appended); other lists replace."""
    if isinstance(patch, dict):
        return _merged(target, patch, strategic_merge)
    if isinstance(patch, list) and isinstance(target, list) and all(
            isinstance(i, dict) and "name" in i for i in [*patch, *target]):
        merged = [dict(i) for i in target]
        for item in patch:
            for i, old in enumerate(merged):
                if old["name"] == item["name"]:
                    merged[i] = strategic_merge(old, item)
                    break
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message)


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    tokens: dict[str, list[str]] = attrs.field(factory=dict)  # token -> audiences
    users: dict[str, str] = attrs.field(factory=dict)  # token -> username
    denied: set[tuple[str, str, str]] = attrs.field(factory=set)  # user, verb, namespace
    access_reviews: list[dict[str, Any]] = attrs.field(factory=list)
    service_ips: str = "10.96."
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1000))
    writes: list[tuple[str, str, str, str]] = attrs.field(factory=list)  # verb, plural, ns, name
    fail_next: dict[tuple[str, str], int] = attrs.field(factory=dict)
    failed: list[tuple[str, str]] = attrs.field(factory=list)

    # loading

    def add_resource(self, group: str, version: str, plural: str, kind: str, *,
                     namespaced: bool = True, status: bool = False) -> None:
        key = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
        self.resources[key] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"} if status else set())

    def add_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            self.add_resource(spec["group"], version["name"], spec["names"]["plural"],
                              spec["names"]["kind"], namespaced=spec["scope"] == "Namespaced",
                              status="status" in (version.get("subresources") or {}))

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store `obj` as if created through the API (server fields set); returns it."""
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        plural = self._plural(group, version, str(obj["kind"]))
        meta = obj.get("metadata") or {}
        stored = self._created(dict(obj), meta.get("namespace"))
        self.objects[self._resource(group, version, plural), meta.get("namespace"),
                     meta["name"]] = stored
        return stored

    def get_object(self, kind_plural: str, namespace: str | None,
                   name: str) -> dict[str, Any] | None:
        """`kind_plural`: `apps/v1/deployments`, `v1/services`, ..."""
        key = (kmock.resource(kind_plural), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _plural(self, group: str, version: str, kind: str) -> str:
        for resource in self.resources:
            if resource.group == group and resource.version == version and \
                    self.resources[resource].kind == kind:
                return str(resource.plural)
        raise KeyError(f"no resource of kind {kind} in {group}/{version}")

    @staticmethod
    def _resource(group: str, version: str, plural: str) -> kmock.resource:
        return kmock.resource(group=group, version=version, plural=plural)

    # server-set fields

    def _now(self) -> str:
        return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _created(self, obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if namespace is not None:
            meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = str(next(self._versions))
        meta["generation"] = 1
        meta.setdefault("creationTimestamp", self._now())
        if obj.get("kind") == "Service":
            spec = obj.setdefault("spec", {})
            spec.setdefault("clusterIP", f"{self.service_ips}{len(self.writes) // 250}."
                            f"{len(self.writes) % 250 + 2}")
        return obj

    def _updated(self, old: Mapping[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
            if field in (old.get("metadata") or {}):
                meta[field] = old["metadata"][field]
        if old.get("kind") == "Service" and "clusterIP" in (old.get("spec") or {}):
            new.setdefault("spec", {})["clusterIP"] = old["spec"]["clusterIP"]
        generation = int((old.get("metadata") or {}).get("generation") or 1)
        meta["generation"] = generation + (old.get("spec") != new.get("spec"))
        meta["resourceVersion"] = str(next(self._versions))
        return new

    def _has_status(self, resource: kmock.resource) -> bool:
        info = self.resources[resource]
        return "status" in info.subresources or (resource.group,
                                                 resource.plural) in _BUILTIN_STATUS

    # serving

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        method = str(request.method.value if request.method is not None else "").upper()
        if request.url.path.endswith("/tokenreviews") and method == "POST":
            return await self._review(request)
        if request.url.path.endswith("/subjectaccessreviews") and method == "POST":
            return await self._access(request)
        if request.resource is None or request.action in (
                enums.action.LIST, enums.action.WATCH, enums.action.FETCH) or method == "GET":
            return await super()._handle(request)
        fault = (method, str(request.resource.plural))
        if self.fail_next.get(fault, 0) > 0:
            self.fail_next[fault] -= 1
            self.failed.append(fault)
            return await self._render_error(_error(500, "InternalError", "injected fault"))
        try:
            async with self._lock:
                body = await self._write(request, method)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)
        # A create answers 201 Created, as the real server does (the official client reads
        # the body of a create only for a 201).
        return aiohttp.web.json_response(body, status=201 if method == "POST" else 200)

    async def _write(self, request: rendering.Request, method: str) -> dict[str, Any]:
        resource = request.resource
        assert resource is not None
        if resource not in list(self._get_resources()):
            raise kmock.KubernetesResourceNotFoundError()
        data = request.data if isinstance(request.data, dict) else {}
        if method == "POST" and request.name is None:
            namespace = request.namespace or (data.get("metadata") or {}).get("namespace")
            name = (data.get("metadata") or {}).get("name")
            key = (resource, namespace, name)
            if key in self.objects and not self.objects[key].deleted:
                raise _error(409, "AlreadyExists", f"{resource.plural} {name!r} already exists")
            obj = self._created(data, namespace)
            if key in self.objects:
                self.objects[key].create(obj)
            else:
                self.objects[key] = obj
            await self._event(resource, "ADDED", obj)
            self.writes.append(("create", str(resource.plural), str(namespace), str(name)))
            return obj
        key = (resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise _error(404, "NotFound", f"{resource.plural} {request.name!r} not found")
        old = copy.deepcopy(self.objects[key].raw)
        if method == "DELETE":
            return await self._delete(resource, key, old)
        if method == "PUT":
            new = copy.deepcopy(data)
        elif method == "PATCH":
            new = self._patched(request, resource, old, data)
        else:
            raise _error(405, "MethodNotAllowed", f"{method} is not served here")
        status_only = request.subresource == "status"
        if self._has_status(resource):
            if status_only:  # only the status changes through the subresource
                new = {**old, "status": new.get("status")}
            else:  # and never through the main resource
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in old:
                    new["status"] = old["status"]
        new = self._updated(old, new)
        self.objects[key].history.append(new)
        self.writes.append((method.lower() + ("-status" if status_only else ""),
                            str(resource.plural), str(request.namespace), str(request.name)))
        await self._event(resource, "MODIFIED", new)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._gone(resource, key, new)
        return new

    def _patched(self, request: rendering.Request, resource: kmock.resource,
                 old: dict[str, Any], data: Any) -> dict[str, Any]:
        kind = (request.headers.get("Content-Type") or request.headers.get("content-type")
                or "").split(";")[0].strip()
        builtin = resource.group in ("", "apps")
        if kind == "application/merge-patch+json":
            return dict(merge_patch(old, data))
        if kind == "application/strategic-merge-patch+json":
            if not builtin:
                raise _error(415, "UnsupportedMediaType", "the body of the request was in an "
                             "unknown format - accepted media types include: "
                             "application/json-patch+json, application/merge-patch+json, "
                             "application/apply-patch+yaml")
            return dict(strategic_merge(old, data))
        if kind == "application/json-patch+json":
            ops = request.data if isinstance(request.data, list) else json.loads(request.text)
            try:
                return dict(jsonpatch.apply_patch(old, ops))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                # A failed `test` (someone wrote meanwhile) is the server's 422, as for real.
                raise _error(422, "Invalid", f"the patch cannot be applied: {exc}") from exc
        raise _error(415, "UnsupportedMediaType", f"content type {kind!r} is not a patch")

    async def _delete(self, resource: kmock.resource, key: tuple[Any, ...],
                      old: dict[str, Any]) -> dict[str, Any]:
        meta = old.setdefault("metadata", {})
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = self._now()
                meta["resourceVersion"] = str(next(self._versions))
                self.objects[key].history.append(old)
                await self._event(resource, "MODIFIED", old)
            self.writes.append(("delete", str(resource.plural), str(key[1]), str(key[2])))
            return old
        self.writes.append(("delete", str(resource.plural), str(key[1]), str(key[2])))
        await self._gone(resource, key, old)
        return old

    async def _gone(self, resource: kmock.resource, key: tuple[Any, ...],
                    obj: dict[str, Any]) -> None:
        """The object is deleted; then, as the garbage collector does, its dependents."""
        self.objects[key].delete()
        await self._event(resource, "DELETED", obj)
        uid = (obj.get("metadata") or {}).get("uid")
        for other_key in list(self.objects):
            other = self.objects[other_key]
            if other.deleted:
                continue
            owners = (other.raw.get("metadata") or {}).get("ownerReferences") or []
            if uid and any(o.get("uid") == uid for o in owners):
                await self._delete(other_key[0], other_key, copy.deepcopy(other.raw))

    async def _event(self, resource: kmock.resource, kind: str, obj: dict[str, Any]) -> None:
        await self._buses[resource].put({"type": kind, "object": copy.deepcopy(obj)})

    async def _review(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        spec = (request.data or {}).get("spec") or {}
        audiences = self.tokens.get(str(spec.get("token")))
        wanted = list(spec.get("audiences") or [])
        ok = audiences is not None and all(a in audiences for a in wanted)
        return aiohttp.web.json_response({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
            "spec": spec, "status": {"authenticated": ok, "audiences": wanted if ok else [],
                       **({"user": {"username": self.users.get(
                           str(spec.get("token")), "system:serviceaccount:test:client"),
                           "groups": ["system:authenticated"]}} if ok else {})}})

    async def _access(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        spec = (request.data or {}).get("spec") or {}
        attrs_ = spec.get("resourceAttributes") or {}
        self.access_reviews.append(spec)
        allowed = (spec.get("user"), attrs_.get("verb"), attrs_.get("namespace")) \
            not in self.denied
        return aiohttp.web.json_response({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "metadata": {}, "spec": spec, "status": {"allowed": allowed}})

    # lists and watches, with label selectors

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        found = await super()._serve_list(request)
        assert isinstance(found, dict)
        selector = request.params.get("labelSelector") or ""
        found["items"] = [o for o in found["items"] if selector_matches(
            selector, (o.get("metadata") or {}).get("labels") or {})]
        found["metadata"] = {"resourceVersion": str(next(self._versions))}
        return found

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        selector = request.params.get("labelSelector") or ""
        async for event in super()._serve_watch(request):
            if not isinstance(event, dict) or selector_matches(
                    selector, ((event.get("object") or {}).get("metadata") or {}).get(
                        "labels") or {}):
                yield event
