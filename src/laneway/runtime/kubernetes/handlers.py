"""kopf handlers for `Sandbox`: each runs `operator.reconcile` and reports through kopf, with
explicit retry delays instead of kopf's 60 s default. Needs a cluster (not exercised in tests;
`reconcile` and the plans it executes are)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from laneway.core.kubernetes.plan import FINALIZER
from laneway.runtime.kubernetes.cluster import KubernetesCluster
from laneway.runtime.kubernetes.operator import reconcile

__all__: list[str] = []

_clusters: list[KubernetesCluster] = []


def _api() -> KubernetesCluster:  # pragma: no cover - needs a cluster
    if not _clusters:
        _clusters.append(KubernetesCluster())
    return _clusters[0]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:  # pragma: no cover
    settings.persistence.finalizer = FINALIZER
    settings.batching.error_delays = [1, 2, 5, 10, 10, 30]


@kopf.on.resume("laneway.dev", "v1alpha1", "sandboxes")
@kopf.on.create("laneway.dev", "v1alpha1", "sandboxes")
@kopf.on.update("laneway.dev", "v1alpha1", "sandboxes")
@kopf.timer("laneway.dev", "v1alpha1", "sandboxes", interval=30.0)
def sandbox_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:  # pragma: no cover
    plan, status = reconcile(body, _api())
    patch.status.update(status)
    if any(a.verb == "delete-sandbox" for a in plan.actions):
        _api().custom.delete_namespaced_custom_object(
            "laneway.dev", "v1alpha1", str(body.metadata.namespace), "sandboxes",
            str(body.metadata.name))
    if plan.conditions and plan.conditions[0]["reason"] == "RenderFailed":
        raise kopf.TemporaryError(plan.conditions[0]["message"],
                                  delay=plan.requeue_after or 10)


@kopf.on.delete("laneway.dev", "v1alpha1", "sandboxes")
def sandbox_deleted(body: kopf.Body, **_: Any) -> None:  # pragma: no cover
    deleting = {**body, "metadata": {**body["metadata"],
                                     "deletionTimestamp": datetime.now(UTC).isoformat()}}
    reconcile(deleting, _api())
