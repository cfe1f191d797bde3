"""The operator's pass on an in-memory cluster (our own `Cluster` interface): it executes the
plan, keeps the routing key in status, and converges; the kopf handlers import cleanly."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml

from laneway.core.kubernetes import load_manifests
from laneway.core.kubernetes.plan import FINALIZER
from laneway.runtime.kubernetes.cluster import MemoryCluster
from laneway.runtime.kubernetes.operator import reconcile

DATA = Path(__file__).parents[1] / "data" / "k8s"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_reconcile_creates_then_converges_and_keeps_the_key() -> None:
    cluster = MemoryCluster(load_manifests(DATA))
    body = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    body["metadata"].update(creationTimestamp="2026-11-23T11:00:00Z", finalizers=[FINALIZER],
                            uid="0b6f3c9e-1d2a-4e0b-9a51-5c7d2e8f1a20")
    _plan, status = reconcile(body, cluster, NOW)
    assert len(status["routingKey"]) == 12
    assert ("create", "Deployment", "pricing-lw-sb-a") in cluster.log
    fork = cluster.store[("Deployment", "shop", "pricing-lw-sb-a")]
    assert fork["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    team_vs = cluster.store[("VirtualService", "shop", "pricing")]
    assert "ownerReferences" not in team_vs["metadata"]
    body["status"] = status
    cluster.log.clear()
    _plan, again = reconcile(body, cluster, NOW)
    assert again["routingKey"] == status["routingKey"]
    assert cluster.log == []
    starting = again["conditions"][0]
    assert (starting["reason"], starting["status"]) == ("ForksStarting", "False")
    assert starting["lastTransitionTime"] == "2026-11-23T12:00:00Z"
    assert again["baggage"] == f"laneway-key={status['routingKey']}"

    # The forks become available: Ready turns True, and its transition time moves.
    for (kind, _, name), obj in cluster.store.items():
        if kind == "Deployment" and name.endswith("-lw-sb-a"):
            obj["status"] = {"availableReplicas": 1, "updatedReplicas": 1}
    body["status"] = again
    body["metadata"]["generation"] = 4
    later = NOW.replace(minute=5)
    _, ready = reconcile(body, cluster, later)
    condition = ready["conditions"][0]
    assert (condition["reason"], condition["status"]) == ("ForksReady", "True")
    assert condition["lastTransitionTime"] == "2026-11-23T12:05:00Z"
    assert condition["observedGeneration"] == 4
    body["status"] = ready
    _, still = reconcile(body, cluster, NOW.replace(minute=9))
    assert still["conditions"][0]["lastTransitionTime"] == "2026-11-23T12:05:00Z"  # unchanged


def test_handlers_module_imports() -> None:
    import laneway.runtime.kubernetes.handlers as handlers

    assert callable(handlers.sandbox_changed)


def test_a_sandboxs_key_comes_from_its_uid_so_concurrent_first_passes_agree() -> None:
    from laneway.core.keys import is_routing_key, routing_key_of

    first, second = routing_key_of("6f1c0000-0000-4000-8000-000000000001"), \
        routing_key_of("6f1c0000-0000-4000-8000-000000000001")
    assert first == second
    assert is_routing_key(first)
    assert routing_key_of("6f1c0000-0000-4000-8000-000000000002") != first
