"""Reconcile planning for the operator: a Sandbox, the cluster's objects, the time -> actions,
status conditions and when to look again. Pure: the operator's handlers only execute the plan.

Level-triggered and idempotent: the plan compares what `render_sandbox` wants with what the
cluster has (objects labelled `laneway.dev/sandbox=<name>`, and the VirtualServices that carry
routes of this sandbox), so running it twice, or after a restart, changes nothing more.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from laneway.core.duration import parse_duration
from laneway.core.kubernetes.render import (
    SANDBOX_LABEL,
    RenderError,
    render_sandbox,
    route_name,
)

__all__ = ["Action", "SandboxPlan", "plan_sandbox"]

FINALIZER = "laneway.dev/cleanup"
RETRY_ERROR_S = 10.0  # explicit, instead of kopf's default of 60 s
RESYNC_S = 300.0


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
    meta = obj["metadata"]
    return obj["kind"], str(meta.get("namespace", "default")), str(meta["name"])


def _owned_by(obj: Mapping[str, Any], sandbox: str) -> bool:
    return bool(obj.get("metadata", {}).get("labels", {}).get(SANDBOX_LABEL) == sandbox)


def _routes_of(vs: Mapping[str, Any], sandbox: str) -> list[dict[str, Any]]:
    return [r for r in vs.get("spec", {}).get("http", []) if r.get("name") == route_name(sandbox)]


def _without_routes(vs: Mapping[str, Any], sandbox: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(vs))
    out["spec"]["http"] = [r for r in vs["spec"].get("http", [])
                           if r.get("name") != route_name(sandbox)]
    return out


def _condition(status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": "Ready", "status": status, "reason": reason, "message": message}


def _cleanup(sandbox: str, cluster: Sequence[Mapping[str, Any]]) -> list[Action]:
    actions = []
    for obj in cluster:
        kind, namespace, name = _ident(obj)
        if kind in ("Deployment", "Service") and _owned_by(obj, sandbox):
            actions.append(Action("delete", kind, namespace, name))
        elif kind == "VirtualService" and _routes_of(obj, sandbox):
            rest = _without_routes(obj, sandbox)
            laneway_owned = obj.get("metadata", {}).get("labels", {}).get(
                "app.kubernetes.io/managed-by") == "laneway"
            only_default = all(r.get("name") == "laneway-default" for r in rest["spec"]["http"])
            if laneway_owned and only_default:
                actions.append(Action("delete", kind, namespace, name))
            else:
                actions.append(Action("patch", kind, namespace, name, rest))
    return actions


def plan_sandbox(sandbox: Mapping[str, Any], cluster: Sequence[Mapping[str, Any]],
                 routing_key: str, now: datetime) -> SandboxPlan:
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
        desired = render_sandbox(sandbox, [dict(o) for o in baseline], routing_key)
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
        elif have.get("spec") != obj.get("spec"):
            plan.actions.append(Action("replace", *ident, obj))
    for ident, existing in current.items():
        if ident not in wanted and ident[0] in ("Deployment", "Service") and \
                _owned_by(existing, name):
            plan.actions.append(Action("delete", *ident))  # a fork removed from the spec
    plan.conditions.append(_condition("True", "Reconciled",
                                      f"{len(wanted)} objects for routing key {routing_key}"))
    if plan.requeue_after is None:
        plan.requeue_after = RESYNC_S
    return plan
