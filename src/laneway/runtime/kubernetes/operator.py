"""The operator: kopf handlers for `Sandbox` that plan (pure, `core.kubernetes.plan`) and
execute against the cluster, with explicit retry delays instead of kopf's 60 s default.

`reconcile` is the whole pass; `handlers` wires it to kopf. Run the operator with
`kopf run -m laneway.runtime.kubernetes.handlers` (the operator Deployment's command).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from laneway.core.keys import new_routing_key
from laneway.core.kubernetes.plan import SandboxPlan, plan_sandbox
from laneway.runtime.kubernetes.cluster import Cluster

__all__ = ["reconcile"]


def _owner_reference(body: Mapping[str, Any]) -> dict[str, Any] | None:
    meta = body.get("metadata", {})
    if not meta.get("uid"):
        return None
    return {"apiVersion": "laneway.dev/v1alpha1", "kind": "Sandbox", "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def reconcile(body: Mapping[str, Any], cluster: Cluster,
              now: datetime | None = None) -> tuple[SandboxPlan, dict[str, Any]]:
    """One pass for one Sandbox: plan, execute, and return the plan and the new status.

    Sandbox-level verbs (finalizers, deleting the Sandbox itself) are left to the caller, which
    owns the Sandbox object (kopf patches it)."""
    meta = body.get("metadata", {})
    namespace = str(meta.get("namespace", "default"))
    status = dict(body.get("status") or {})
    key = status.get("routingKey") or new_routing_key()  # generated once, kept in status
    plan = plan_sandbox(body, cluster.objects(namespace), key, now or datetime.now(UTC))
    owner = _owner_reference(body)
    for action in plan.actions:
        if action.kind in ("Deployment", "Service", "VirtualService"):
            obj = action.body
            if obj is not None and owner and action.kind != "VirtualService":
                # Deleting the Sandbox cascades to its forks even if the operator is away;
                # VirtualServices are shared with the team and cleaned by the finalizer.
                obj = {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}}
            cluster.apply(action.verb, action.kind, action.namespace, action.name, obj)
    return plan, {"routingKey": key, "conditions": plan.conditions}
