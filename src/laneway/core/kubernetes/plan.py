"""Reconcile planning for the operator: a Sandbox (or a RouteGroup), the cluster's objects, the
time -> actions, status conditions and when to look again. Pure: the operator only executes it.

Level-triggered and idempotent: the plan compares what `render_sandbox` wants with what the
cluster has (objects labelled `laneway.dev/sandbox=<name>`, the VirtualServices that carry
routes of this sandbox, the baseline objects router mode injects), so running it twice, or after
a restart, changes nothing more. "What the cluster has" may carry more than laneway asked for
(the API server fills in defaults), so an object is changed only when it lacks what is wanted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from laneway.core.duration import parse_duration
from laneway.core.kubernetes.convert import check_spec
from laneway.core.kubernetes.groups import group_route_name, render_route_group
from laneway.core.kubernetes.objects import (
    MANAGED_BY,
    SANDBOX_LABEL,
    Mode,
    RenderError,
    namespace_of,
)
from laneway.core.kubernetes.render import render_sandbox, route_name
from laneway.core.kubernetes.router_mode import RouterSidecar

__all__ = ["Action", "SandboxPlan", "covers", "plan_route_group", "plan_sandbox"]

FINALIZER = "laneway.dev/cleanup"
RETRY_ERROR_S = 10.0  # explicit, instead of kopf's default of 60 s
RESYNC_S = 300.0
GROUP_RESYNC_S = 10.0
STARTING_S = 3.0


@dataclass(frozen=True, slots=True)
class Action:
    verb: Literal["create", "replace", "patch", "delete", "delete-sandbox", "remove-finalizer",
                  "add-finalizer"]
    kind: str
    namespace: str
    name: str
    body: Mapping[str, Any] | None = None


@dataclass(slots=True)
class SandboxPlan:
    actions: list[Action] = field(default_factory=list)
    conditions: list[dict[str, str]] = field(default_factory=list)
    requeue_after: float | None = None


def _ident(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], namespace_of(obj, "default"), str(obj["metadata"]["name"])


def _owned_by(obj: Mapping[str, Any], sandbox: str) -> bool:
    return bool(obj.get("metadata", {}).get("labels", {}).get(SANDBOX_LABEL) == sandbox)


def covers(have: Any, want: Any) -> bool:
    """Whether `have` holds everything in `want` (mappings may hold more: server defaults)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and covers(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(
            covers(h, w) for h, w in zip(have, want, strict=True))
    return bool(have == want)


def _routes_named(vs: Mapping[str, Any], route: str) -> list[dict[str, Any]]:
    return [r for r in vs.get("spec", {}).get("http", []) if r.get("name") == route]


def _without_route(vs: Mapping[str, Any], route: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(vs))
    out["spec"]["http"] = [r for r in vs["spec"].get("http", []) if r.get("name") != route]
    return out


def _remove_routes(route: str, cluster: Sequence[Mapping[str, Any]]) -> list[Action]:
    """Take the routes named `route` out of every VirtualService; delete a laneway-owned one
    that is left with its default route only."""
    actions = []
    for obj in cluster:
        kind, namespace, name = _ident(obj)
        if kind != "VirtualService" or not _routes_named(obj, route):
            continue
        rest = _without_route(obj, route)
        labels = obj.get("metadata", {}).get("labels") or {}
        laneway_owned = MANAGED_BY.items() <= labels.items()
        only_default = all(r.get("name") == "laneway-default" for r in rest["spec"]["http"])
        if laneway_owned and only_default:
            actions.append(Action("delete", kind, namespace, name))
        else:
            actions.append(Action("patch", kind, namespace, name, rest))
    return actions


def _condition(status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": "Ready", "status": status, "reason": reason, "message": message}


def _cleanup(sandbox: str, cluster: Sequence[Mapping[str, Any]]) -> list[Action]:
    actions = [Action("delete", *_ident(o)) for o in cluster
               if o["kind"] in ("Deployment", "Service") and _owned_by(o, sandbox)]
    return actions + _remove_routes(route_name(sandbox), cluster)


def plan_sandbox(sandbox: Mapping[str, Any], cluster: Sequence[Mapping[str, Any]],
                 routing_key: str, now: datetime, mode: Mode = "istio",
                 sidecar: RouterSidecar | None = None) -> SandboxPlan:
    meta = sandbox.get("metadata", {})
    name = str(meta.get("name"))
    namespace = str(meta.get("namespace", "default"))
    plan = SandboxPlan()
    if meta.get("deletionTimestamp"):
        plan.actions = _cleanup(name, cluster)
        plan.actions.append(Action("remove-finalizer", "Sandbox", namespace, name))
        plan.conditions.append(_condition("False", "Deleting", "removing what it created"))
        return plan
    if FINALIZER not in meta.get("finalizers", []):
        plan.actions.append(Action("add-finalizer", "Sandbox", namespace, name))
    try:
        check_spec(sandbox.get("spec") or {})
    except RenderError as exc:
        plan.conditions.append(_condition("False", "RenderFailed", str(exc)))
        plan.requeue_after = RETRY_ERROR_S
        return plan
    ttl = sandbox.get("spec", {}).get("ttl")
    if ttl:
        created = datetime.fromisoformat(str(meta["creationTimestamp"]).replace("Z", "+00:00"))
        left = created.timestamp() + parse_duration(str(ttl)) - now.timestamp()
        if left <= 0:
            plan.actions = [Action("delete-sandbox", "Sandbox", namespace, name)]
            plan.conditions.append(_condition("False", "Expired", f"ttl {ttl} passed"))
            return plan
        plan.requeue_after = min(left, RESYNC_S)
    baseline = [o for o in cluster if not _owned_by(o, name)]
    try:
        desired = render_sandbox(sandbox, [dict(o) for o in baseline], routing_key, mode,
                                 sidecar)
    except RenderError as exc:
        # E.g. the forked Deployment disappeared from the baseline: say so, touch nothing
        # (the next pass fixes the world once the baseline is back), and look again soon.
        plan.conditions.append(_condition("False", "RenderFailed", str(exc)))
        plan.requeue_after = RETRY_ERROR_S
        return plan
    current = {_ident(o): o for o in cluster}
    wanted = {_ident(o) for o in desired}
    for obj in desired:
        ident = _ident(obj)
        have = current.get(ident)
        if have is None:
            plan.actions.append(Action("create", *ident, obj))
        elif ident[0] == "VirtualService":
            if have.get("spec", {}).get("http") != obj["spec"]["http"]:
                plan.actions.append(Action("patch", *ident, obj))
        elif not covers(have, {"spec": obj.get("spec"),
                               "metadata": {k: obj["metadata"][k] for k in
                                            ("labels", "annotations") if k in obj["metadata"]}}):
            plan.actions.append(Action("replace", *ident, obj))
    for ident, existing in current.items():
        if ident not in wanted and ident[0] in ("Deployment", "Service") and \
                _owned_by(existing, name):
            plan.actions.append(Action("delete", *ident))  # a fork removed from the spec
    changed = {(a.kind, a.namespace, a.name) for a in plan.actions}
    forks = [o for o in desired if o["kind"] == "Deployment" and _owned_by(o, name)]
    starting = [_ident(o)[2] for o in forks
                if _ident(o) in changed or not _available(current[_ident(o)])]
    if starting:
        # Ready means "send your requests now": not before every fork has a pod serving the
        # wanted version. Look again soon rather than at the next resync.
        plan.conditions.append(_condition("False", "ForksStarting", (
            f"waiting for {', '.join(starting)} to have an available pod")))
        plan.requeue_after = STARTING_S
    else:
        plan.conditions.append(_condition("True", "ForksReady", (
            f"{len(forks)} forks ready for routing key {routing_key}")))
    if plan.requeue_after is None:
        plan.requeue_after = RESYNC_S
    return plan


def _available(deployment: Mapping[str, Any]) -> bool:
    """Rolled out: the controller has seen the current spec and an updated pod is available."""
    status = deployment.get("status") or {}
    generation = deployment.get("metadata", {}).get("generation")
    seen = generation is None or int(status.get("observedGeneration") or 0) >= int(generation)
    updated = status.get("updatedReplicas", status.get("availableReplicas"))
    return seen and int(status.get("availableReplicas") or 0) >= 1 and int(updated or 0) >= 1


def plan_route_group(group: Mapping[str, Any], sandboxes: Sequence[Mapping[str, Any]],
                     cluster: Sequence[Mapping[str, Any]], routing_key: str,
                     mode: Mode = "istio") -> tuple[SandboxPlan, dict[str, Any]]:
    """A RouteGroup: its routes in the VirtualServices of the services its members fork
    (istio mode; router mode routes it in the table), stale ones taken out, and its status."""
    meta = group.get("metadata", {})
    name = str(meta.get("name"))
    namespace = str(meta.get("namespace", "default"))
    plan = SandboxPlan()
    mine = group_route_name(name)
    if meta.get("deletionTimestamp"):
        plan.actions = _remove_routes(mine, cluster)
        plan.actions.append(Action("remove-finalizer", "RouteGroup", namespace, name))
        return plan, {"routingKey": routing_key, "conditions": [
            _condition("False", "Deleting", "removing its routes")]}
    if FINALIZER not in meta.get("finalizers", []):
        plan.actions.append(Action("add-finalizer", "RouteGroup", namespace, name))
    live = [s for s in sandboxes if not s.get("metadata", {}).get("deletionTimestamp")]
    try:
        desired, status = render_route_group(group, live, [dict(o) for o in cluster],
                                             routing_key, mode)
    except RenderError as exc:
        plan.conditions.append(_condition("False", "RenderFailed", str(exc)))
        plan.requeue_after = RETRY_ERROR_S
        return plan, {"routingKey": routing_key, "conditions": plan.conditions}
    wanted = {_ident(o): o for o in desired}
    for ident, obj in wanted.items():
        have = next((o for o in cluster if _ident(o) == ident), None)
        if have is None or have.get("spec", {}).get("http") != obj["spec"]["http"]:
            plan.actions.append(Action("patch", *ident, obj))
    stale = [o for o in cluster if _ident(o) not in wanted]
    plan.actions += _remove_routes(mine, stale)  # services no member forks any more
    if status["conflicts"]:
        plan.conditions.append(_condition("False", "Conflict", "; ".join(
            f"{c['service']} is forked by {', '.join(c['sandboxes'])}"
            for c in status["conflicts"])))
    elif not status["sandboxes"]:
        plan.conditions.append(_condition("True", "NoMembers", "no sandbox matches: the key "
                                          "routes to the baseline everywhere"))
    else:
        plan.conditions.append(_condition("True", "Reconciled",
                                          f"{len(status['sandboxes'])} sandboxes matched"))
    # Members come and go without the group changing: look again soon (level-triggered).
    plan.requeue_after = GROUP_RESYNC_S
    return plan, {**status, "conditions": plan.conditions}
