"""The operator's passes: plan (pure, `core.kubernetes.plan`) and execute against a `Cluster`,
for Sandboxes and RouteGroups, and, in router mode, the routes table the router sidecars follow.

`handlers` wires these to kopf. Run the operator with
`kopf run -m laneway.runtime.kubernetes.handlers` (the operator Deployment's command).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from laneway.core.feed import RoutesBroadcaster
from laneway.core.keys import new_routing_key, routing_key_of
from laneway.core.kubernetes.objects import SANDBOX_LABEL, Mode
from laneway.core.kubernetes.plan import SandboxPlan, plan_route_group, plan_sandbox
from laneway.core.kubernetes.router_mode import RouterSidecar
from laneway.core.kubernetes.table import build_route_table
from laneway.core.routes import RouteTable
from laneway.runtime.kubernetes.cluster import Cluster

__all__ = ["OperatorSettings", "RoutesPublisher", "reconcile", "reconcile_route_group"]


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    mode: Mode = "istio"
    sidecar: RouterSidecar = field(default_factory=RouterSidecar)


def _key_of(body: Mapping[str, Any]) -> str:
    """The object's routing key: kept in its status once written; until then derived from its
    uid, so that two passes running at once (kopf's handler and a fork Deployment's event)
    agree on it. A body without a uid (never stored by an API server) gets a fresh one."""
    uid = body.get("metadata", {}).get("uid")
    return routing_key_of(str(uid)) if uid else new_routing_key()


def _owner_reference(body: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    meta = body.get("metadata", {})
    if not meta.get("uid"):
        return None
    return {"apiVersion": "laneway.dev/v1alpha1", "kind": kind, "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def _execute(plan: SandboxPlan, cluster: Cluster, owner: dict[str, Any] | None,
             sandbox: str | None) -> None:
    for action in plan.actions:
        if action.kind not in ("Deployment", "Service", "VirtualService"):
            continue  # verbs on the custom resource itself are the caller's (kopf patches it)
        obj = action.body
        owned = obj is not None and sandbox is not None and (
            obj["metadata"].get("labels") or {}).get(SANDBOX_LABEL) == sandbox
        if obj is not None and owner and owned:
            # Deleting the Sandbox cascades to its forks even if the operator is away; shared
            # objects (VirtualServices, the baseline's router injection) are not owned by it.
            obj = {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}}
        cluster.apply(action.verb, action.kind, action.namespace, action.name, obj)


def _stamped(conditions: list[dict[str, str]], body: Mapping[str, Any],
             now: datetime) -> list[dict[str, Any]]:
    """Conditions as Kubernetes conventions have them: `lastTransitionTime` moves only when
    the status changes, and `observedGeneration` says which spec they describe."""
    before = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
    generation = body.get("metadata", {}).get("generation")
    out: list[dict[str, Any]] = []
    for condition in conditions:
        previous = before.get(condition["type"])
        since = previous.get("lastTransitionTime") if previous and previous.get(
            "status") == condition["status"] else None
        stamped: dict[str, Any] = {**condition, "lastTransitionTime": since or now.strftime(
            "%Y-%m-%dT%H:%M:%SZ")}
        if generation is not None:
            stamped["observedGeneration"] = int(generation)
        out.append(stamped)
    return out


def reconcile(body: Mapping[str, Any], cluster: Cluster, now: datetime | None = None,
              settings: OperatorSettings | None = None) -> tuple[SandboxPlan, dict[str, Any]]:
    """One pass for one Sandbox: plan, execute, and return the plan and the new status."""
    settings = settings or OperatorSettings()
    meta = body.get("metadata", {})
    namespace = str(meta.get("namespace", "default"))
    status = dict(body.get("status") or {})
    key = status.get("routingKey") or _key_of(body)
    now = now or datetime.now(UTC)
    plan = plan_sandbox(body, cluster.objects(namespace, str(meta.get("name"))), key, now,
                        settings.mode, settings.sidecar)
    _execute(plan, cluster, _owner_reference(body, "Sandbox"), str(meta.get("name")))
    return plan, {"routingKey": key, "baggage": f"laneway-key={key}",
                  "conditions": _stamped(plan.conditions, body, now)}


def reconcile_route_group(body: Mapping[str, Any], cluster: Cluster,
                          settings: OperatorSettings | None = None) -> tuple[
                              SandboxPlan, dict[str, Any]]:
    """One pass for one RouteGroup: its routes where its members' forks are, and its status."""
    settings = settings or OperatorSettings()
    namespace = str(body.get("metadata", {}).get("namespace", "default"))
    key = (body.get("status") or {}).get("routingKey") or _key_of(body)
    plan, status = plan_route_group(body, cluster.custom("Sandbox"), cluster.objects(namespace),
                                    key, settings.mode)
    _execute(plan, cluster, None, None)
    return plan, {**status, "conditions": _stamped(plan.conditions, body, datetime.now(UTC))}


class RoutesPublisher:
    """Router mode: the table the sidecars follow, rebuilt from the cluster and published on a
    feed whose versions start from the clock (a restarted operator never reuses a version its
    routers still hold)."""

    def __init__(self) -> None:
        self.feed = RoutesBroadcaster(first_version=int(time.time() * 1000))

    @staticmethod
    def build(cluster: Cluster) -> RouteTable:
        """Read the cluster (blocking: run it in a thread beside an event loop)."""
        return build_route_table(cluster.custom("Sandbox"), cluster.custom("RouteGroup"),
                                 cluster.routed())

    def publish(self, table: RouteTable) -> bool:
        """Make `table` current (on the feed's event loop); whether anything changed."""
        return self.feed.publish(table) is not None
