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
    for action in plan.actions:
        if action.kind in ("Deployment", "Service", "VirtualService"):
            cluster.apply(action.verb, action.kind, action.namespace, action.name, action.body)
    return plan, {"routingKey": key, "conditions": plan.conditions}
