"""The kopf handlers, called as kopf calls them (with `kopf.Body` and `kopf.Patch`) over the
in-memory cluster: status written through kopf's patch, a fork Deployment's event turning the
Sandbox Ready, TTL deleting the Sandbox, a render failure retried with an explicit delay,
deletion cleaning up, route groups. kopf's own dispatch and the official client's calls need a
cluster and are not exercised here."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

import laneway.runtime.kubernetes.handlers as handlers
from laneway.core.kubernetes import load_manifests
from laneway.core.kubernetes.plan import FINALIZER
from laneway.runtime.kubernetes.cluster import MemoryCluster

DATA = Path(__file__).parents[1] / "data" / "k8s"


@pytest.fixture
def cluster() -> Iterator[MemoryCluster]:
    memory = MemoryCluster(load_manifests(DATA))
    handlers._clusters[:] = [memory]
    yield memory
    handlers._clusters.clear()


def stored_sandbox(cluster: MemoryCluster, created: datetime) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    body["metadata"].update(creationTimestamp=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            finalizers=[FINALIZER], uid="6f1c0000-0000-4000-8000-000000000001")
    cluster.apply("create", "Sandbox", "shop", "sb-a", body)
    return body


async def test_sandbox_handlers_from_creation_to_ready_to_deletion(
    cluster: MemoryCluster,
) -> None:
    body = stored_sandbox(cluster, datetime.now(UTC))
    patch = kopf.Patch()
    await handlers.sandbox_changed(body=kopf.Body(body), patch=patch)
    status = patch["status"]
    assert status["conditions"][0]["reason"] == "ForksStarting"
    assert ("Deployment", "shop", "pricing-lw-sb-a") in cluster.store
    cluster.patch_status("Sandbox", "shop", "sb-a", status)  # what kopf does with the patch

    # The Deployment controller reports the forks available; the event handler passes over the
    # Sandbox at once and writes its status itself.
    for name in ("pricing-lw-sb-a", "currency-lw-sb-a"):
        cluster.store[("Deployment", "shop", name)]["status"] = {"availableReplicas": 1,
                                                                 "updatedReplicas": 1}
    await handlers.fork_deployment_event(namespace="shop",
                                         labels={"laneway.dev/sandbox": "sb-a"})
    stored = cluster.get("Sandbox", "shop", "sb-a")
    assert stored is not None
    assert stored["status"]["conditions"][0]["reason"] == "ForksReady"
    assert stored["status"]["routingKey"] == status["routingKey"]  # the key is kept

    await handlers.sandbox_deleted(body=kopf.Body(stored))
    assert not [k for k in cluster.store if k[2].endswith("-lw-sb-a")]
    team_vs = cluster.store[("VirtualService", "shop", "pricing")]
    assert [r["name"] for r in team_vs["spec"]["http"]] == ["canary-by-header", "default"]


async def test_an_expired_sandbox_is_deleted_and_a_render_failure_retried(
    cluster: MemoryCluster,
) -> None:
    body = stored_sandbox(cluster, datetime.now(UTC) - timedelta(hours=3))  # ttl 2h
    await handlers.sandbox_changed(body=kopf.Body(body), patch=kopf.Patch())
    assert cluster.get("Sandbox", "shop", "sb-a") is None

    body = stored_sandbox(cluster, datetime.now(UTC))
    body["spec"]["forks"][0]["workload"]["name"] = "gone"
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError, match="no Deployment 'gone'") as failure:
        await handlers.sandbox_changed(body=kopf.Body(body), patch=patch)
    assert failure.value.delay == 10.0  # explicit, not kopf's 60 s
    assert patch["status"]["conditions"][0]["reason"] == "RenderFailed"
    assert not [k for k in cluster.store if k[2].endswith("-lw-sb-a")]  # nothing touched


async def test_route_group_handlers(cluster: MemoryCluster) -> None:
    body = stored_sandbox(cluster, datetime.now(UTC))
    patch = kopf.Patch()
    await handlers.sandbox_changed(body=kopf.Body(body), patch=patch)
    cluster.patch_status("Sandbox", "shop", "sb-a", patch["status"])
    group = {"apiVersion": "laneway.dev/v1alpha1", "kind": "RouteGroup",
             "metadata": {"name": "pay", "namespace": "shop", "finalizers": [FINALIZER]},
             "spec": {"match": {"labels": {"team": "pay"}}}}
    patch = kopf.Patch()
    await handlers.route_group_changed(body=kopf.Body(group), patch=patch)
    assert patch["status"]["sandboxes"] == ["sb-a"]
    assert patch["status"]["conditions"][0]["reason"] == "Reconciled"
    routes = [r["name"] for r in cluster.store[("VirtualService", "shop", "pricing")]["spec"][
        "http"]]
    assert routes == ["laneway-rg-pay", "laneway-sb-a", "canary-by-header", "default"]
    # The sandbox's and the group's passes agree on that order: neither undoes the other.
    cluster.log.clear()
    await handlers.sandbox_changed(body=kopf.Body(cluster.get("Sandbox", "shop", "sb-a")),
                                   patch=kopf.Patch())
    await handlers.route_group_changed(body=kopf.Body({**group, "status": patch["status"]}),
                                       patch=kopf.Patch())
    assert cluster.log == []
    await handlers.route_group_deleted(body=kopf.Body({**group, "status": patch["status"]}))
    routes = [r["name"] for r in cluster.store[("VirtualService", "shop", "pricing")]["spec"][
        "http"]]
    assert "laneway-rg-pay" not in routes
    assert "laneway-sb-a" in routes


async def test_startup_sets_explicit_retry_delays() -> None:
    settings = kopf.OperatorSettings()
    assert settings.execution.default_backoff == 60  # kopf's own, which laneway replaces
    await handlers.configure(settings=settings)
    assert settings.execution.default_backoff == 10.0
    assert max(settings.queueing.error_delays) == 30  # a broken watch: back within seconds
    assert settings.persistence.finalizer == FINALIZER
