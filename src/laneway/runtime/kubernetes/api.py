"""The laneway API served by the operator: what the CLI and MCP call on a cluster
(`laneway context add NAME --k8s`), at the same paths and with the same shapes as the local
control plane's, backed by the custom resources.

- Sandboxes and route groups are `Sandbox` and `RouteGroup` resources: `PUT
  /v1/sandboxes/NAME` takes the plain sandbox file (forks with `workload`, `image`, `env`) or
  the resource, and applies it; the operator's passes do the rest, as after `kubectl apply`.
- The namespace is the `laneway-namespace` header's (a context's `--namespace`), else the
  operator's default (`LANEWAY_DEFAULT_NAMESPACE`, `default`).
- Hops: router sidecars push their records to `POST /v1/hops` in batches; they are kept in a
  bounded log (oldest dropped) that answers `GET /v1/hops`, `/v1/leaks` and runs.
- Runs execute where they are started (the CLI's machine, a CI job: that is where the tests
  and the code are), never in the operator: `POST /v1/runs` registers one and answers
  `executor: client` with the routing key and the services' URLs; the client runs the command
  and posts its outcome to `POST /v1/runs/ID/result`; the operator makes the report from the
  hops it received (in Istio mode, from the fork pods' Istio request counters, without paths).

Authentication: a bearer token the API server vouches for (a TokenReview: a ServiceAccount's
or a user's token), then a SubjectAccessReview for what the request does (`get`, `list`,
`create`, `update`, `delete` on `sandboxes` or `routegroups` in the namespace): a user may do
through the operator what RBAC lets them do with kubectl, no more. Router sidecars use their
projected token (audience `laneway-routes`) for the feed and for hops. `LANEWAY_API_TOKEN`, when
set, is one more token, allowed everything (a development operator, tests).

What needs this machine's processes in the local API (logs, env, restart, reload, captures,
diff, the web UI) answers 501 with what does it on a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from laneway import __version__
from laneway.core.baggage import baggage_value
from laneway.core.duration import parse_duration
from laneway.core.hoplog import HopLog
from laneway.core.hops import HOP_PUSH_INTERVAL_S, Hop
from laneway.core.keys import routing_key_of
from laneway.core.kubernetes.convert import sandbox_resource
from laneway.core.kubernetes.objects import SANDBOX_LABEL, Mode, RenderError, object_name
from laneway.core.kubernetes.telemetry import Answer
from laneway.core.kubernetes.telemetry import reached as reached_between
from laneway.core.runs import (
    failed_tests,
    find_leaks,
    hop_findings,
    new_report,
    unreached_reason,
    verdict_of,
)
from laneway.core.secrets import mask_tree
from laneway.core.spec import DNS_LABEL_RE
from laneway.runtime.kubernetes.feed import Answers

__all__ = ["ClusterApi", "RunStart", "cluster_app"]

log = logging.getLogger("laneway.operator.api")

NAMESPACE_HEADER = "laneway-namespace"
MAX_HOPS_PER_BATCH = 5000
MAX_RUNS = 1000  # reports kept in memory (oldest dropped)
# A run's last hops are in a sidecar's buffer for up to one push interval when its command
# ends: the report waits that long, and a little more, before it is made.
HOP_SETTLE_S = HOP_PUSH_INTERVAL_S + 0.5
_AUTH_TTL = 60.0  # seconds a TokenReview's answer is kept
_ACCESS_TTL = 10.0  # seconds a SubjectAccessReview's answer is kept
_NOT_HERE = {
    "logs": "kubectl logs -n NAMESPACE deploy/WORKLOAD-lw-SANDBOX",
    "env": "kubectl get sandbox NAME -o yaml (the forks' env is in its spec)",
    "restart": "kubectl rollout restart deploy/NAME",
    "reload": "kubectl apply -f your manifests",
    "captures": "a local environment (`laneway up`): captures are not collected on a cluster yet",
    "diff": "a local environment (`laneway up`): diffs are not made on a cluster yet",
    "ui": "a local environment (`laneway ui`)",
    "shutdown": "kubectl delete deploy/laneway-operator -n laneway-system",
}


class ApiCluster(Protocol):
    """What the API needs of the cluster (`KubernetesCluster`), blocking: called in threads."""

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def namespaced(self, kind: str, namespace: str) -> list[dict[str, Any]]: ...
    def custom(self, kind: str) -> list[dict[str, Any]]: ...
    def objects(self, namespace: str, sandbox: str | None = None) -> list[dict[str, Any]]: ...
    def put_custom(self, kind: str, namespace: str, name: str,
                   body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]: ...
    def apply(self, verb: str, kind: str, namespace: str, name: str,
              body: Mapping[str, Any] | None) -> None: ...
    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def identity(self, token: str) -> dict[str, Any] | None: ...
    def may(self, identity: Mapping[str, Any], verb: str, plural: str,
            namespace: str) -> bool: ...


class Telemetry(Protocol):
    """Istio mode: requests each fork pod received, by answer (`PodTelemetry`, over the pods'
    sidecar stats), by pod name; a run's report takes the difference."""

    async def counts(self, pods: list[dict[str, Any]]) -> dict[str, dict[Answer, float]]: ...


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def _client_errors(exc: Exception) -> ApiError | None:
    """The Kubernetes client's refusals, as the API's own errors."""
    status = getattr(exc, "status", None)
    if not isinstance(status, int) or status < 400:
        return None
    reason = str(getattr(exc, "reason", "") or "")
    body = str(getattr(exc, "body", "") or "")[:300]
    if status == 404:
        return ApiError(404, "not_found", "not found")
    if status == 409:
        return ApiError(409, "conflict", "it changed while it was being applied (someone "
                        "else wrote it); read it again and retry")
    if status == 422:
        return ApiError(422, "invalid", f"the Kubernetes API server refused it: {body}")
    if status == 403:
        return ApiError(502, "forbidden_to_operator", "the operator's ServiceAccount may not "
                        f"do this (its ClusterRole, from `laneway k8s install`): {body}")
    return ApiError(502, "api_server", f"the Kubernetes API server answered {status} "
                    f"{reason}: {body}")


class RunStart(BaseModel):
    """What `POST /v1/runs` takes on a cluster: the local API's run spec, less what only a
    local daemon can honour (a command it runs itself in a folder of its machine)."""

    model_config = ConfigDict(extra="ignore")  # cwd, env: the client's, used by the client

    sandbox: str | None = None
    routegroup: str | None = None
    command: list[str] | str = Field(description="argv list, or a line run by /bin/sh -c")
    timeout_s: float | None = Field(default=None, gt=0, le=86400)
    allow_unreached: bool = False
    diff: bool = False
    capture: bool = False


class RunResult(BaseModel):
    """What a client reports when the command it ran ends."""

    model_config = ConfigDict(extra="forbid")

    exit_code: int | None = None
    timed_out: bool = False
    interrupted: bool = False
    duration_s: float = Field(ge=0)
    proxied_requests: int = Field(default=0, ge=0)
    output_bytes: int = Field(default=0, ge=0)
    output_tail: list[str] = Field(default_factory=list, max_length=200)
    junit: str | None = Field(default=None, max_length=16 << 20)
    error: str | None = Field(default=None, max_length=2000)


def _conditions(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(c.get("type")): c for c in (obj.get("status") or {}).get("conditions") or []}


def _key(obj: Mapping[str, Any]) -> str:
    status = obj.get("status") or {}
    uid = (obj.get("metadata") or {}).get("uid")
    return str(status.get("routingKey") or (routing_key_of(str(uid)) if uid else ""))


def _phase(obj: Mapping[str, Any]) -> tuple[str, bool, str]:
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return "deleting", False, "being deleted: the operator is removing its forks and routes"
    ready = _conditions(obj).get("Ready")
    if ready is None:
        return "pending", False, "waiting for the operator's first pass"
    generation = (obj.get("metadata") or {}).get("generation")
    seen = ready.get("observedGeneration")
    if generation is not None and seen is not None and int(seen) < int(generation):
        # A status about the spec before this one says nothing about this one.
        return "pending", False, f"waiting for the operator to apply generation {generation}"
    message = str(ready.get("message") or ready.get("reason") or "")
    if ready.get("status") == "True":
        return "ready", True, message
    if ready.get("reason") in ("RenderFailed", "Expired"):
        return "failed", False, message
    return "pending", False, message


def _expires(obj: Mapping[str, Any]) -> float | None:
    ttl = (obj.get("spec") or {}).get("ttl")
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ttl or not created:
        return None
    try:
        start = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        return start.timestamp() + parse_duration(str(ttl))
    except ValueError:
        return None


def sandbox_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A `Sandbox` as the local API shows a sandbox (the fields the CLI and MCP read), with the
    resource itself under `resource`."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    phase, ready, message = _phase(obj)
    key = _key(obj)
    forks = []
    for fork in spec.get("forks") or []:
        workload = fork.get("workload") or {}
        env = {str(e.get("name")): e.get("value", "(from valueFrom)")
               for e in fork.get("env") or []}
        forks.append({"service": workload.get("name"), "workload": workload,
                      "image": fork.get("image"), "container": fork.get("container"),
                      "env": env})
    return {
        "name": meta.get("name"), "namespace": meta.get("namespace"),
        "generation": meta.get("generation"), "labels": spec.get("labels") or {},
        "ttl": spec.get("ttl"), "expiresAt": _expires(obj), "createdAt": meta.get(
            "creationTimestamp"), "routingKey": key, "baggage": baggage_value(key) if key else "",
        "capture": bool(spec.get("capture")), "forks": forks,
        "status": {"phase": phase, "ready": ready, "message": message,
                   "conditions": list(_conditions(obj).values()),
                   "forks": [{"service": f["service"], "phase": phase, "pid": None,
                              "restarts": 0, "message": ""} for f in forks]},
        "resource": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                     "metadata": {k: v for k, v in meta.items() if k != "managedFields"},
                     "spec": spec, "status": obj.get("status") or {}},
    }


def group_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    phase, ready, message = _phase(obj)
    conflicts = list(status.get("conflicts") or [])
    key = _key(obj)
    return {"name": meta.get("name"), "namespace": meta.get("namespace"),
            "routingKey": key, "baggage": baggage_value(key) if key else "",
            "match": (obj.get("spec") or {}).get("match") or {},
            "labels": (obj.get("spec") or {}).get("labels") or {},
            "status": {"phase": phase, "ready": ready, "message": message,
                       "sandboxes": list(status.get("sandboxes") or []),
                       "conflicts": conflicts}}


def route_group_resource(doc: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """A route group as the local API takes it (`name`, `match: {labels}`) or the resource."""
    if doc.get("kind") == "RouteGroup":
        return dict(doc)
    for path, given, known in (("", doc, ("name", "namespace", "match", "labels")),
                               ("match.", doc.get("match") or {}, ("labels",))):
        for field in sorted(set(given) - set(known)) if isinstance(given, Mapping) else []:
            near = difflib.get_close_matches(str(field), known, 1)
            hint = f"did you mean {near[0]!r}?" if near else f"the fields: {', '.join(known)}"
            raise RenderError(f"{path}{field}: unknown field; {hint}")
    name = doc.get("name")
    if not isinstance(name, str) or not DNS_LABEL_RE.fullmatch(name) or len(name) > 40:
        raise RenderError("name: must be a DNS label (a-z, 0-9, '-') of at most 40 characters")
    match = doc.get("match")
    if not isinstance(match, Mapping) or not isinstance(match.get("labels"), Mapping) or \
            not match["labels"]:
        raise RenderError("match.labels: required: the label globs a sandbox must match, "
                          "e.g. {team: pay}")
    return {"apiVersion": "laneway.dev/v1alpha1", "kind": "RouteGroup",
            "metadata": {"name": doc.get("name"), "namespace": doc.get("namespace") or namespace},
            "spec": {"match": {"labels": dict(match["labels"])},
                     **({"labels": dict(doc["labels"])} if doc.get("labels") else {})}}


class ClusterApi:
    """The state behind the operator's API: the cluster (through `ApiCluster`), the hops the
    sidecars pushed, and the runs' reports (in memory: a restarted operator has none)."""

    def __init__(self, cluster: ApiCluster, mode: Mode = "istio", *,
                 default_namespace: str = "default", hop_capacity: int = 200_000,
                 dev_token: str | None = None, telemetry: Telemetry | None = None,
                 settle_s: float = HOP_SETTLE_S) -> None:
        self.cluster = cluster
        self.mode = mode
        self.default_namespace = default_namespace
        self.hops = HopLog(hop_capacity)
        self.runs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.routers: dict[str, dict[str, Any]] = {}  # who pushed hops: counts, drops
        self.telemetry = telemetry
        self.settle_s = settle_s
        self.started_at = time.time()
        self._dev_token = dev_token.encode() if dev_token else None
        self._identities = Answers(_AUTH_TTL)
        self._access = Answers(_ACCESS_TTL)
        self._before: dict[str, dict[str, dict[Answer, float]]] = {}  # run -> Istio counts
        self._finished: dict[str, asyncio.Event] = {}  # running runs

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking cluster call in a thread, its refusals as `ApiError`s."""
        try:
            return await asyncio.to_thread(fn, *args)
        except ApiError:
            raise
        except Exception as exc:
            mapped = _client_errors(exc)
            if mapped is None:
                raise
            raise mapped from exc

    # who may

    def has_dev_token(self, token: str) -> bool:
        return self._dev_token is not None and hmac.compare_digest(token.encode(),
                                                                   self._dev_token)

    async def identity(self, token: str) -> dict[str, Any] | None:
        if self.has_dev_token(token):
            return {"username": "laneway:development-token", "groups": [], "all": True}
        found, who = self._identities.get(token)
        if not found:
            try:
                who = await asyncio.to_thread(self.cluster.identity, token)
            except Exception:  # the API server is away: refuse now, ask again next time
                log.warning("TokenReview failed", exc_info=True)
                return None
            self._identities.put(token, who)
        return who if isinstance(who, dict) else None

    async def authorize(self, who: Mapping[str, Any], verb: str, plural: str,
                        namespace: str) -> None:
        if who.get("all"):
            return
        key = (who.get("username"), tuple(who.get("groups") or ()), verb, plural, namespace)
        found, allowed = self._access.get(key)
        if not found:
            allowed = await self.call(self.cluster.may, who, verb, plural, namespace)
            self._access.put(key, allowed)
        if not allowed:
            raise ApiError(403, "forbidden", f"{who.get('username')} may not {verb} {plural} "
                           f"in namespace {namespace} (RBAC: grant it with a Role, or use a "
                           "context with another namespace: laneway context add … "
                           "--namespace N)")

    # sandboxes and route groups

    async def sandbox(self, namespace: str, name: str) -> dict[str, Any]:
        obj = await self.call(self.cluster.get, "Sandbox", namespace, name)
        if obj is None:
            names = [o["metadata"]["name"] for o in await self.call(
                self.cluster.namespaced, "Sandbox", namespace)]
            raise ApiError(404, "not_found", f"sandbox {name!r} not found in namespace "
                           f"{namespace}; sandboxes there: {', '.join(names) or 'none'}")
        return dict(obj)

    async def group(self, namespace: str, name: str) -> dict[str, Any]:
        obj = await self.call(self.cluster.get, "RouteGroup", namespace, name)
        if obj is None:
            raise ApiError(404, "not_found", f"route group {name!r} not found in namespace "
                           f"{namespace}")
        return dict(obj)

    async def keys_of_sandbox(self, namespace: str, name: str) -> set[str]:
        """The sandbox's key and those of the route groups it is in."""
        keys = {_key(await self.sandbox(namespace, name))}
        for group in await self.call(self.cluster.namespaced, "RouteGroup", namespace):
            if name in ((group.get("status") or {}).get("sandboxes") or []):
                keys.add(_key(group))
        return keys

    async def all_keys(self) -> set[str]:
        keys: set[str] = set()
        for kind in ("Sandbox", "RouteGroup"):
            keys |= {_key(o) for o in await self.call(self.cluster.custom, kind)}
        return keys - {""}

    async def services(self, namespace: str) -> list[dict[str, Any]]:
        """The baseline's Services of the namespace, in the local API's shape."""
        out = []
        for obj in await self.call(self.cluster.objects, namespace):
            if obj.get("kind") != "Service":
                continue
            meta = obj["metadata"]
            ports = (obj.get("spec") or {}).get("ports") or []
            port = ports[0].get("port") if ports else None
            name = meta["name"]
            url = f"http://{name}.{namespace}.svc:{port}" if port else ""
            protocol = str(ports[0].get("appProtocol") or "http") if ports else "http"
            out.append({"name": name, "url": url, "protocol": protocol, "phase": "ready",
                        "ready": True, "pid": None, "restarts": 0, "message": "",
                        "ports": [p.get("port") for p in ports]})
        return out

    # hops

    def receive_hops(self, router: str, hops: list[Hop], dropped: int) -> None:
        self.hops.add(hops)
        seen = self.routers.setdefault(router, {"hops": 0, "dropped": 0, "lastSeen": 0.0})
        seen["hops"] += len(hops)
        seen["dropped"] = max(int(seen["dropped"]), dropped)  # the router's running count
        seen["lastSeen"] = time.time()

    # runs

    async def start_run(self, spec: RunStart, namespace: str) -> dict[str, Any]:
        if bool(spec.sandbox) == bool(spec.routegroup):
            raise ApiError(422, "invalid", "name either a sandbox or a route group to run "
                           "against", field="sandbox")
        if (isinstance(spec.command, str) and not spec.command.strip()) or not spec.command:
            raise ApiError(422, "invalid", "command: must name a command to run",
                           field="command")
        if spec.sandbox:
            target = await self.sandbox(namespace, spec.sandbox)
            view = sandbox_view(target)
            key = view["routingKey"]
            forks = [f"{f['service']}@{spec.sandbox}" for f in view["forks"]]
            members = [spec.sandbox]
            note = "" if view["status"]["ready"] else \
                f"sandbox {spec.sandbox} was not ready when the run started: " \
                f"{view['status']['message']}"
        else:
            assert spec.routegroup is not None
            gview = group_view(await self.group(namespace, spec.routegroup))
            key = gview["routingKey"]
            members = gview["status"]["sandboxes"]
            forks = []
            for member in members:
                mview = sandbox_view(await self.sandbox(namespace, member))
                forks += [f"{f['service']}@{member}" for f in mview["forks"]]
            note = gview["status"]["message"] if gview["status"]["conflicts"] else ""
        if self.mode == "istio":
            note = ("Istio mode: forks reached come from the fork pods' Istio request "
                    "counters; paths (hops) and leaks are not available in this mode. "
                    + note).strip()
        run_id = "r" + secrets.token_hex(4)
        environment: dict[str, str] = {}
        for svc in await self.services(namespace):
            suffix = str(svc["name"]).upper().replace("-", "_")
            if svc["url"]:
                environment[f"LANEWAY_URL_{suffix}"] = svc["url"]
                environment[f"LANEWAY_ADDR_{suffix}"] = svc["url"].removeprefix("http://")
        report = new_report(
            run_id, spec.sandbox, spec.routegroup, key, spec.command, forks, note,
            spec.allow_unreached, namespace=namespace, cwd=None, output_path=None,
            mode=self.mode, paths=self.mode == "router",
            # The client runs the command, with this environment added to its own.
            executor="client", environment=environment)
        if spec.diff or spec.capture:
            report["note"] = ("--diff and --capture are not available on a cluster yet; "
                              "the run goes on without them. " + report["note"]).strip()
        if self.mode == "istio" and self.telemetry is not None:
            self._before[run_id] = await self.telemetry.counts(
                await self._fork_pods(namespace, members))
        self.runs[run_id] = report
        self._finished[run_id] = asyncio.Event()
        while len(self.runs) > MAX_RUNS:
            old, _ = self.runs.popitem(last=False)
            self._before.pop(old, None)
            self._finished.pop(old, None)
        return report

    async def _fork_pods(self, namespace: str, sandboxes: list[str]) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = []
        for name in sandboxes:
            pods += await self.call(self.cluster.pods, namespace, f"{SANDBOX_LABEL}={name}")
        return pods

    def run(self, run_id: str) -> dict[str, Any]:
        report = self.runs.get(run_id)
        if report is None:
            raise ApiError(404, "not_found", f"run {run_id!r} not found; `laneway runs list` "
                           "shows the runs this operator has (it keeps them in memory: a "
                           "restarted operator has none)")
        return report

    async def wait_run(self, run_id: str, wait: float) -> dict[str, Any]:
        report = self.run(run_id)
        done = self._finished.get(run_id)
        if wait and done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), wait)
        return report

    async def finish_run(self, run_id: str, result: RunResult) -> dict[str, Any]:
        report = self.run(run_id)
        if report["status"] != "running":
            raise ApiError(409, "finished", f"run {run_id} has its result already")
        forks = list(report["forks_reached"])
        await asyncio.sleep(self.settle_s)  # the sidecars' last batches
        if report["mode"] == "istio" and self.telemetry is not None:
            found = await self._istio_findings(report, forks)
        else:
            hops = self.hops.query(since=float(report["started_at"]) - 0.01,
                                   limit=10_000_000)
            found = hop_findings(_by_workload(hops, forks), str(report["routing_key"]), forks)
        tests, failures = failed_tests(result.junit, result.output_tail)
        note = str(report["note"])
        if result.interrupted:
            verdict = "interrupted"
            note = f"the run was stopped before its command finished. {note}"
        elif result.error:
            verdict = "error"
            note = f"{result.error}. {note}"
        else:
            verdict = verdict_of(result.exit_code, found["forks_reached"],
                                 allow_unreached=bool(report["allow_unreached"]))
        if result.timed_out:
            note = "timed out; the command was stopped. " + note
        if verdict == "vacuous":
            missing = ", ".join(f for f, n in found["forks_reached"].items() if not n)
            reason = unreached_reason(found) if report["paths"] else (
                "no request reached it, by its pods' Istio counters (send the key in "
                "`baggage`; does the test call the forked service?)")
            note = f"the command passed but never reached {missing}: {reason}. {note}"
        report.update(found)
        report.update(
            status="interrupted" if verdict == "interrupted" else "finished",
            verdict=verdict, exit_code=result.exit_code, timed_out=result.timed_out,
            duration_s=round(result.duration_s, 3), finished_at=time.time(),
            proxied_requests=result.proxied_requests, output_bytes=result.output_bytes,
            output_tail=[line[:400] for line in result.output_tail[-40:]],
            failures=failures, tests=tests, note=note.strip())
        done = self._finished.pop(run_id, None)
        if done is not None:
            done.set()
        return report

    async def _istio_findings(self, report: dict[str, Any], forks: list[str]) -> dict[str, Any]:
        assert self.telemetry is not None
        members = sorted({fork.partition("@")[2] for fork in forks})
        after = await self.telemetry.counts(await self._fork_pods(str(report["namespace"]),
                                                                  members))
        before = self._before.pop(str(report["id"]), {})
        reached = dict.fromkeys(forks, 0)
        responses: dict[str, dict[str, int]] = {fork: {} for fork in forks}
        for pod, counts in after.items():
            fork = next((f for f in forks if pod.startswith(_fork_prefix(f))), None)
            if fork is None:
                continue
            traffic = reached_between(before.get(pod, {}), counts)
            # Requests the sidecar answered itself (Envoy's response flags: no upstream, reset)
            # did not reach the fork, as the router's own 503s do not.
            reached[fork] += max(0, traffic.requests - traffic.flagged)
            for cls, count in traffic.classes.items():
                responses[fork][cls] = responses[fork].get(cls, 0) + count
        return {"forks_reached": reached, "hops": 0, "key_conflicts": 0, "captured": 0,
                "fork_responses": responses, "leaks": []}


def _by_workload(hops: list[Hop], forks: list[str]) -> list[Hop]:
    """Hops with the forks' names as a run's report has them (`pricing@sb-a`, by workload):
    a sidecar names a service as its table does (`pricing.shop`, `pricing.shop:grpc`), and
    says which fork Deployment served it (`Hop.fork`)."""
    units = {object_name(fork.partition("@")[0], "lw", fork.partition("@")[2]): fork
             for fork in forks}
    out = []
    for hop in hops:
        fork = units.get(hop.fork) if hop.destination != "baseline" else None
        out.append(dataclasses.replace(hop, service=fork.partition("@")[0]) if fork else hop)
    return out


def _fork_prefix(fork: str) -> str:
    """The pod name prefix of a fork `service@sandbox` (its Deployment's, `core.kubernetes`)."""
    service, _, sandbox = fork.partition("@")
    return object_name(service, "lw", sandbox) + "-"


def _masked(view: dict[str, Any]) -> dict[str, Any]:
    """A sandbox's view with its forks' secret-looking env values masked (in the resource's
    spec too); the routing key and the rest are not secrets."""
    out = {**view, "forks": [{**f, "env": mask_tree(f.get("env") or {})}
                             for f in view["forks"]]}
    resource = view.get("resource") or {}
    spec = resource.get("spec") or {}
    if spec.get("forks"):
        masked = [{**f, "env": [{**e, "value": mask_tree(e.get("value"), str(e.get("name")))}
                                if "value" in e else e for e in f.get("env") or []]}
                  for f in spec["forks"]]
        out["resource"] = {**resource, "spec": {**spec, "forks": masked}}
    return out


def _same_place(resource: dict[str, Any], name: str, namespace: str) -> None:
    """The resource is applied where the request says (the path's name, the context's
    namespace); a file that says otherwise is refused, as `kubectl apply -n` refuses it."""
    meta = resource.setdefault("metadata", {})
    if meta.get("name") not in (None, name):
        raise ApiError(422, "invalid", f"metadata.name: the file says {meta['name']!r}, the "
                       f"request {name!r}", field="metadata.name")
    if meta.get("namespace") not in (None, namespace):
        raise ApiError(422, "invalid", f"namespace: the file says {meta['namespace']!r}, but "
                       f"this context's namespace is {namespace!r}: drop it from the file, or "
                       f"use a context for it (laneway context add NAME --k8s … --namespace "
                       f"{meta['namespace']})", field="namespace")
    meta.update(name=name, namespace=namespace)


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, **extra}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return data


Endpoint = Callable[[Request], Awaitable[Response]]


def cluster_app(state: ClusterApi, routes: Endpoint | None = None,
                routers_allowed: Callable[[str], Awaitable[bool]] | None = None) -> FastAPI:
    """The operator's HTTP API; `routes` serves `GET /v1/routes` (router mode's feed) and
    `routers_allowed(token)` says whether a token is a router sidecar's (feed and hops)."""
    app = FastAPI(title="laneway control plane (Kubernetes operator)", version=__version__,
                  description="Sandboxes, route groups, hops and runs of a cluster.")

    def namespace_of(request: Request) -> str:
        namespace = request.headers.get(NAMESPACE_HEADER) or state.default_namespace
        if not DNS_LABEL_RE.fullmatch(namespace):
            raise ApiError(400, "bad_request", f"{NAMESPACE_HEADER}: {namespace!r} is not a "
                           "namespace name (lower-case letters, digits, '-')",
                           field=NAMESPACE_HEADER)
        return namespace

    async def allowed(request: Request, verb: str, plural: str = "sandboxes") -> str:
        namespace = namespace_of(request)
        await state.authorize(request.state.who, verb, plural, namespace)
        return namespace

    @app.middleware("http")
    async def authenticate(request: Request,
                           call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if path in ("/healthz", "/openapi.json", "/docs"):
            return await call_next(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _error(401, "unauthorized", "authorization: send 'Bearer <token>': a token "
                          "the cluster's API server accepts (`kubectl create token SA`); "
                          "`laneway context add NAME --k8s --token-command …` sends one")
        router_path = (path == "/v1/routes" and request.method == "GET") or (
            path == "/v1/hops" and request.method == "POST")
        if router_path:
            # The feed holds every namespace's keys: for router sidecars (their projected
            # token, audience laneway-routes) and the development token, not for users.
            dev = await state.identity(token) if state.has_dev_token(token) else None
            if dev is None and (routers_allowed is None or not await routers_allowed(token)):
                return _error(401, "unauthorized", f"{path} is for router sidecars: send a "
                              "ServiceAccount token with audience laneway-routes")
            request.state.who = dev or {"username": "router", "router": True}
            return await call_next(request)
        who = await state.identity(token)
        if who is None:
            return _error(401, "unauthorized", "the cluster's API server does not accept this "
                          "token (expired, or for another audience); mint a new one")
        request.state.who = who
        if router_path and path == "/v1/hops" and not who.get("all"):
            return _error(403, "forbidden", "only router sidecars (their projected token, "
                          "audience laneway-routes) may send hops")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        extra: dict[str, Any] = {}
        if exc.field:
            extra = {"field": exc.field, "errors": [{"field": exc.field,
                                                      "message": exc.message}]}
        return _error(exc.status, exc.code, exc.message, **extra)

    @app.exception_handler(RenderError)
    async def render_error(request: Request, exc: RenderError) -> JSONResponse:
        message = str(exc)
        field = message.partition(":")[0] if ":" in message else None
        return _error(422, "invalid", message, field=field,
                      errors=[{"field": field, "message": message}])

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API %s %s failed", request.method, request.url.path)
        return _error(500, "internal", f"the operator failed on {request.method} "
                      f"{request.url.path}: {type(exc).__name__}: {exc}; its log (kubectl "
                      "logs -n laneway-system deploy/laneway-operator) has the traceback")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/v1/status")
    async def status(request: Request) -> dict[str, Any]:
        namespace = await allowed(request, "list")
        sandboxes = [sandbox_view(o) for o in await state.call(
            state.cluster.namespaced, "Sandbox", namespace)]
        groups = [group_view(o) for o in await state.call(
            state.cluster.namespaced, "RouteGroup", namespace)]
        return {
            "name": f"kubernetes ({state.mode} mode) namespace {namespace}",
            "kind": "kubernetes", "mode": state.mode, "namespace": namespace,
            "startedAt": state.started_at, "services": await state.services(namespace),
            "sandboxes": [{"name": s["name"], "routingKey": s["routingKey"],
                           "phase": s["status"]["phase"], "message": s["status"]["message"],
                           "forks": [f["service"] for f in s["forks"]]} for s in sandboxes],
            "routeGroups": [{"name": g["name"], "routingKey": g["routingKey"],
                             "ready": g["status"]["ready"], "message": g["status"]["message"]}
                            for g in groups],
            "routers": state.routers, "hopsKept": len(state.hops),
            "hopsReceived": state.hops.received,
        }

    @app.get("/v1/services")
    async def services(request: Request) -> list[dict[str, Any]]:
        return await state.services(await allowed(request, "list"))

    @app.get("/v1/sandboxes")
    async def list_sandboxes(request: Request, reveal_secrets: bool = False) -> list[
            dict[str, Any]]:
        namespace = await allowed(request, "list")
        views = [sandbox_view(o) for o in await state.call(
            state.cluster.namespaced, "Sandbox", namespace)]
        return [v if reveal_secrets else _masked(v) for v in views]

    async def wait_settled(namespace: str, name: str, wait: float) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        view = sandbox_view(await state.sandbox(namespace, name))
        while view["status"]["phase"] == "pending" and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            view = sandbox_view(await state.sandbox(namespace, name))
        return view

    @app.put("/v1/sandboxes/{name}")
    async def apply_sandbox(request: Request, name: str,
                            wait: float = Query(0, ge=0, le=600),
                            reveal_secrets: bool = False,
                            dry_run: bool = Query(False, alias="dryRun"),
                            create_only: bool = Query(False, alias="createOnly"),
                            if_generation: int | None = Query(None, alias="ifGeneration",
                                                              ge=0)) -> JSONResponse:
        namespace = namespace_of(request)
        doc = await _body(request)
        if doc.get("name", name) != name and doc.get("kind") != "Sandbox":
            raise ApiError(422, "invalid", f"name: the file says {doc.get('name')!r}, the "
                           f"path {name!r}", field="name")
        doc = {**doc, "name": name} if doc.get("kind") != "Sandbox" else doc
        resource = sandbox_resource(doc, namespace)
        _same_place(resource, name, namespace)
        existing = await state.call(state.cluster.get, "Sandbox", namespace, name)
        await state.authorize(request.state.who, "create" if existing is None else "update",
                              "sandboxes", namespace)
        if existing is not None and create_only:
            raise ApiError(409, "exists", f"sandbox {name} exists (createOnly)")
        generation = 0 if existing is None else int(existing["metadata"].get("generation", 1))
        if if_generation is not None and if_generation != generation:
            raise ApiError(409, "generation", f"sandbox {name} is at generation "
                           f"{generation}, not {if_generation}: read it again")
        if dry_run:
            return JSONResponse({**sandbox_view({**(existing or {}), **resource}),
                                 "change": "created" if existing is None else "updated",
                                 "dryRun": True})
        stored, created = await state.call(state.cluster.put_custom, "Sandbox", namespace,
                                           name, resource)
        unchanged = existing is not None and existing.get("spec") == stored.get("spec")
        view = sandbox_view(stored)
        if wait:
            view = await wait_settled(namespace, name, wait)
        view["change"] = "created" if created else "unchanged" if unchanged else "updated"
        return JSONResponse(view if reveal_secrets else _masked(view),
                            status_code=201 if created else 200)

    @app.get("/v1/sandboxes/{name}")
    async def get_sandbox(request: Request, name: str, wait: float = Query(0, ge=0, le=600),
                          reveal_secrets: bool = False) -> dict[str, Any]:
        namespace = await allowed(request, "get")
        view = await wait_settled(namespace, name, wait)
        return view if reveal_secrets else _masked(view)

    @app.delete("/v1/sandboxes/{name}")
    async def delete_sandbox(request: Request, name: str) -> dict[str, Any]:
        namespace = await allowed(request, "delete")
        await state.sandbox(namespace, name)  # a clear 404
        await state.call(state.cluster.apply, "delete", "Sandbox", namespace, name, None)
        return {"deleted": name, "note": "the operator removes its forks and routes (the "
                "finalizer); `laneway sandbox list` shows it `deleting` until then"}

    @app.get("/v1/sandboxes/{name}/env/{service}")
    async def sandbox_env(request: Request, name: str, service: str) -> JSONResponse:
        namespace = await allowed(request, "get")
        view = sandbox_view(await state.sandbox(namespace, name))
        fork = next((f for f in view["forks"] if f["service"] == service), None)
        if fork is None:
            raise ApiError(404, "not_found", f"sandbox {name} forks no {service}")
        key = view["routingKey"]
        return JSONResponse({"LANEWAY_SANDBOX": name, "LANEWAY_ROUTING_KEY": key,
                             **mask_tree(fork["env"])})

    @app.get("/v1/routegroups")
    async def list_groups(request: Request) -> list[dict[str, Any]]:
        namespace = await allowed(request, "list", "routegroups")
        return [group_view(o) for o in await state.call(state.cluster.namespaced,
                                                        "RouteGroup", namespace)]

    @app.put("/v1/routegroups/{name}")
    async def apply_group(request: Request, name: str) -> JSONResponse:
        namespace = namespace_of(request)
        body = await _body(request)
        resource = route_group_resource(body if body.get("kind") == "RouteGroup" else {
            **body, "name": name}, namespace)
        _same_place(resource, name, namespace)
        existing = await state.call(state.cluster.get, "RouteGroup", namespace, name)
        await state.authorize(request.state.who, "create" if existing is None else "update",
                              "routegroups", namespace)
        stored, created = await state.call(state.cluster.put_custom, "RouteGroup",
                                           namespace, name, resource)
        return JSONResponse(group_view(stored), status_code=201 if created else 200)

    @app.get("/v1/routegroups/{name}")
    async def get_group(request: Request, name: str) -> dict[str, Any]:
        namespace = await allowed(request, "get", "routegroups")
        return group_view(await state.group(namespace, name))

    @app.delete("/v1/routegroups/{name}")
    async def delete_group(request: Request, name: str) -> dict[str, Any]:
        namespace = await allowed(request, "delete", "routegroups")
        await state.group(namespace, name)
        await state.call(state.cluster.apply, "delete", "RouteGroup", namespace, name, None)
        return {"deleted": name}

    @app.post("/v1/hops")
    async def push_hops(request: Request) -> dict[str, Any]:
        """Router sidecars: a batch of hop records, `{router, hops: [...], dropped}`."""
        data = await _body(request)
        rows, fields = data.get("rows"), data.get("fields")
        if rows is not None and not (isinstance(fields, list) and all(
                isinstance(f, str) for f in fields)):
            raise ApiError(400, "bad_request", "fields: the names of the rows' columns",
                           field="fields")
        raw = rows if rows is not None else data.get("hops")
        if not isinstance(raw, list) or len(raw) > MAX_HOPS_PER_BATCH:
            raise ApiError(400, "bad_request", f"rows (or hops): a list of at most "
                           f"{MAX_HOPS_PER_BATCH} hop records", field="rows")
        try:
            hops = [Hop.from_row(list(fields or []), h) for h in raw] if rows is not None else \
                [Hop.from_json(h) for h in raw]
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, "bad_request", f"not a hop record: {exc}",
                           field="rows") from exc
        state.receive_hops(str(data.get("router") or "unnamed"), hops,
                           int(data.get("dropped") or 0))
        return {"received": len(hops)}

    @app.get("/v1/hops")
    async def hops(request: Request, sandbox: str | None = None, trace: str | None = None,
                   key: str | None = None, since: float | None = None,
                   limit: int = Query(200, ge=1, le=100_000)) -> list[dict[str, Any]]:
        namespace = await allowed(request, "get")
        keys: set[str] | None = None
        if sandbox is not None:
            keys = await state.keys_of_sandbox(namespace, sandbox)
        if key is not None:
            keys = (keys or set()) | {key}
        try:
            trace_id = state.hops.whole_trace_id(trace.lower()) if trace else None
        except ValueError as exc:  # as the local API answers it
            raise ApiError(422, "invalid", str(exc), field="trace") from exc
        return [h.to_json() for h in state.hops.query(
            routing_keys=keys, destination=sandbox, trace_id=trace_id, since=since,
            limit=limit)]

    @app.get("/v1/leaks")
    async def leaks(request: Request, sandbox: str | None = None,
                    limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        namespace = await allowed(request, "get")
        keys = await state.keys_of_sandbox(namespace, sandbox) if sandbox else \
            await state.all_keys()
        found = find_leaks(state.hops.query(limit=10_000_000), keys)
        return [leak.to_json() for leak in found][-limit:]

    @app.post("/v1/runs")
    async def start_run(request: Request) -> JSONResponse:
        data = await _body(request)
        try:
            spec = RunStart.model_validate(data)
        except ValueError as exc:
            raise ApiError(422, "invalid", str(exc).splitlines()[0]) from exc
        namespace = await allowed(request, "get", "routegroups" if spec.routegroup
                                  else "sandboxes")
        report = await state.start_run(spec, namespace)
        return JSONResponse(report, status_code=201)

    @app.post("/v1/runs/{run_id}/result")
    async def run_result(request: Request, run_id: str) -> dict[str, Any]:
        await allowed(request, "get")
        try:
            result = RunResult.model_validate(await _body(request))
        except ValueError as exc:
            raise ApiError(422, "invalid", str(exc).splitlines()[0]) from exc
        return await state.finish_run(run_id, result)

    @app.get("/v1/runs")
    async def list_runs(request: Request, sandbox: str | None = None,
                        limit: int = Query(50, ge=1, le=MAX_RUNS)) -> list[dict[str, Any]]:
        namespace = await allowed(request, "list")
        found = [r for r in reversed(state.runs.values()) if r["namespace"] == namespace
                 and (sandbox is None or r["sandbox"] == sandbox)]
        return found[:limit]

    @app.get("/v1/runs/{run_id}")
    async def get_run(request: Request, run_id: str,
                      wait: float = Query(0, ge=0, le=60)) -> dict[str, Any]:
        await allowed(request, "get")
        return await state.wait_run(run_id, wait)

    @app.get("/v1/runs/{run_id}/output")
    async def run_output(request: Request, run_id: str,
                         offset: int = Query(0, ge=0)) -> Response:
        await allowed(request, "get")
        report = state.run(run_id)
        # The command's output stayed with the client that ran it; its tail is in the report.
        return Response(b"", media_type="application/octet-stream", headers={
            "x-laneway-next-offset": str(offset), "x-laneway-run-status": report["status"]})

    @app.post("/v1/runs/{run_id}/cancel")
    async def cancel_run(request: Request, run_id: str) -> dict[str, Any]:
        await allowed(request, "get")
        report = state.run(run_id)
        if report["status"] == "running":
            raise ApiError(409, "client_run", f"run {run_id} runs where it was started (the "
                           "CLI or MCP server that started it): stop it there (Ctrl-C)")
        return report

    if routes is not None:
        app.add_api_route("/v1/routes", routes, methods=["GET"], include_in_schema=False)

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"],
                   include_in_schema=False)
    async def not_here(request: Request, rest: str) -> JSONResponse:
        word = next((w for w in _NOT_HERE if f"/{w}" in f"/{rest}"), None)
        if word is None:
            return _error(404, "not_found", f"no such API path: /v1/{rest}")
        return _error(501, "not_on_a_cluster", f"/v1/{rest} is not served by the operator: "
                      f"it needs a local environment's processes; on a cluster: "
                      f"{_NOT_HERE[word]}")

    return app

