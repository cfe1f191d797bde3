"""Router mode's routing table as a pure function of the cluster's objects: baseline to the
application beside the sidecar, keys to fork Services by cluster IP, 503 (never the baseline)
for a fork without an available pod, route groups with one owner or a conflict."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from laneway.core.kubernetes import load_manifests
from laneway.core.kubernetes.table import build_route_table
from laneway.core.routes import Upstream, decide
from laneway.runtime.kubernetes.cluster import MemoryCluster
from laneway.runtime.kubernetes.operator import OperatorSettings, reconcile

DATA = Path(__file__).parents[1] / "data" / "k8s"
ROUTER = OperatorSettings(mode="router")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def applied(name: str, forks: slice, labels: dict[str, str], cluster: MemoryCluster) -> dict[
        str, Any]:
    body = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    body["metadata"].update(name=name, creationTimestamp="2026-11-23T11:00:00Z")
    body["spec"]["forks"] = body["spec"]["forks"][forks]
    body["spec"]["labels"] = labels
    _, status = reconcile(body, cluster, NOW, ROUTER)
    body["status"] = status
    cluster.apply("replace", "Sandbox", "shop", name, body)
    return body


def test_table_from_the_cluster() -> None:
    cluster = MemoryCluster(load_manifests(DATA))
    a = applied("sb-a", slice(None), {"team": "pay"}, cluster)
    b = applied("sb-b", slice(1, None), {"team": "pay"}, cluster)  # currency only
    for dep in cluster.custom("Deployment"):
        if dep["metadata"]["name"] == "pricing-lw-sb-a":
            dep["status"] = {"availableReplicas": 1}
            cluster.apply("replace", "Deployment", "shop", dep["metadata"]["name"], dep)
    group = {"kind": "RouteGroup", "metadata": {"name": "pay", "namespace": "shop"},
             "spec": {"match": {"labels": {"team": "p*"}}},
             "status": {"routingKey": "group0000000"}}
    table = build_route_table(cluster.custom("Sandbox"), [group], cluster.routed())

    assert table.baseline == {"pricing.shop": Upstream("127.0.0.1", 8080),
                              "currency.shop": Upstream("127.0.0.1", 8080)}
    key_a, key_b = a["status"]["routingKey"], b["status"]["routingKey"]
    pricing = table.forks["pricing.shop"]
    fork_ip = cluster.store[("Service", "shop", "pricing-lw-sb-a")]["spec"]["clusterIP"]
    route = decide(pricing, key_a)
    assert route is not None
    assert route.ready
    assert route.upstream == Upstream(fork_ip, 8080)
    assert route.fork == "pricing-lw-sb-a"
    assert decide(pricing, key_b) is None  # sb-b forks currency only: baseline here
    starting = decide(table.forks["currency.shop"], key_a)
    assert starting is not None
    assert not starting.ready
    assert starting.upstream is None
    assert "currency-lw-sb-a has no available pod yet" in starting.reason
    # The group: pricing has one owner (sb-a), currency two (a 503 naming both).
    assert decide(pricing, "group0000000") == route
    conflict = decide(table.forks["currency.shop"], "group0000000")
    assert conflict is not None
    assert not conflict.ready
    assert "forked by sb-a, sb-b" in conflict.reason

    # A sandbox being deleted routes nothing, even before its forks are gone.
    a["metadata"]["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    cluster.apply("replace", "Sandbox", "shop", "sb-a", a)
    table = build_route_table(cluster.custom("Sandbox"), [group], cluster.routed())
    assert decide(table.forks["pricing.shop"], key_a) is None
    assert decide(table.forks["currency.shop"], key_b) is not None


def _pod(name: str, labels: dict[str, str], ip: str, phase: str = "Running") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}


def test_callers_by_pod_ip_name_baseline_and_fork_pods() -> None:
    """The sidecars name who made each request by its source pod, as the local router does by
    process: the baseline's pods by their Service, a fork's pods as `service@sandbox`."""
    cluster = MemoryCluster(load_manifests(DATA))
    applied("sb-a", slice(None), {}, cluster)
    baseline_selector = cluster.store[("Service", "shop", "pricing")]["spec"]["selector"]
    fork_dep = cluster.store[("Deployment", "shop", "pricing-lw-sb-a")]
    fork_labels = fork_dep["spec"]["template"]["metadata"]["labels"]
    fork_selector = cluster.store[("Service", "shop", "pricing-lw-sb-a")]["spec"]["selector"]
    assert all(fork_labels.get(k) == v for k, v in fork_selector.items())
    for pod in (_pod("pricing-1", dict(baseline_selector), "10.1.0.5"),
                _pod("pricing-lw-sb-a-1", dict(fork_labels), "10.1.0.9"),
                _pod("pricing-2", dict(baseline_selector), "10.1.0.6", phase="Pending"),
                _pod("other-1", {"app": "unrelated"}, "10.1.0.7")):
        cluster.apply("create", "Pod", "shop", pod["metadata"]["name"], pod)
    table = build_route_table(cluster.custom("Sandbox"), [], cluster.routed())
    assert table.callers == {"10.1.0.5": "pricing.shop", "10.1.0.9": "pricing.shop@sb-a"}
    assert decide(table.forks["pricing.shop"], "x") is None  # pods change no route
