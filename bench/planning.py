"""Group 6: planning passes, as pure work, at 100 and at 1,000 sandboxes, with the per-sandbox
ratio between the two sizes (1.0: the cost per sandbox does not grow with their number).

- The local reconciler's pass (`plan_actions` + `build_routes`): three services, every sandbox
  forking two, all running.
- The Kubernetes operator (router mode): a namespace with 20 baseline services and N sandboxes
  forking two each; planning one converging Sandbox pass from what the pass reads, and building
  the routes table (republished after a change). Reading the objects is left out: in a cluster
  the API server selects them by label.

Sizes are interleaved round by round, so the shared machine's drift falls on both alike.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from laneway.core.kubernetes.plan import plan_sandbox
from laneway.core.kubernetes.table import build_route_table
from laneway.core.plan import (
    DesiredSandbox,
    all_desired_forks,
    build_routes,
    desired_baseline,
    desired_forks,
    plan_actions,
)
from laneway.core.runtime import UnitState
from laneway.core.spec import parse_project, parse_sandbox
from laneway.runtime.kubernetes.cluster import MemoryCluster
from laneway.runtime.kubernetes.operator import OperatorSettings, reconcile

SERVICES = 20
ROUTER = OperatorSettings(mode="router")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def baseline() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for i in range(SERVICES):
        name = f"svc{i:02d}"
        objects.append({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": f"registry.example/{name}:1",
                                         "ports": [{"containerPort": 8080}]}]}}}})
        objects.append({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": name, "namespace": "shop"},
                        "spec": {"selector": {"app": name},
                                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    return objects


def sandbox(i: int) -> dict[str, Any]:
    return {"apiVersion": "laneway.dev/v1alpha1", "kind": "Sandbox",
            "metadata": {"name": f"sb{i:04d}", "namespace": "shop", "uid": f"uid-{i}",
                         "creationTimestamp": "2026-11-23T11:00:00Z",
                         "finalizers": ["laneway.dev/cleanup"]},
            "spec": {"labels": {"team": f"t{i % 7}"}, "forks": [
                {"workload": {"name": f"svc{i % SERVICES:02d}"}},
                {"workload": {"name": f"svc{(i + 1) % SERVICES:02d}"}}]}}


def cluster_with(count: int) -> tuple[MemoryCluster, list[dict[str, Any]]]:
    cluster = MemoryCluster(baseline())
    bodies = []
    for i in range(count):
        body = sandbox(i)
        _, status = reconcile(body, cluster, NOW, ROUTER)
        body["status"] = status
        cluster.apply("replace", "Sandbox", "shop", body["metadata"]["name"], body)
        bodies.append(body)
    for (kind, _, _), obj in cluster.store.items():
        if kind == "Deployment" and "laneway.dev/sandbox" in obj["metadata"].get("labels", {}):
            obj["status"] = {"availableReplicas": 1, "updatedReplicas": 1}
    return cluster, bodies


def local_pass(count: int) -> Callable[[], object]:
    project = parse_project({"name": "shop", "services": {
        "currency": {"run": "python c.py", "port": 19404},
        "pricing": {"run": "python p.py", "port": 19403},
        "web": {"run": "python w.py", "port": 19401}}})
    sandboxes = [DesiredSandbox(parse_sandbox({"name": f"sb{i}", "forks": [
        {"service": "pricing"}, {"service": "web"}]}), f"k{i:011d}", 0.0)
        for i in range(count)]
    actual = {unit: UnitState(unit, spec.service, None, "ready", port=20000)
              for unit, spec in desired_baseline(project).items()}
    for sandbox in sandboxes:
        for unit, spec in desired_forks(project, sandbox).items():
            actual[unit] = UnitState(unit, spec.service, sandbox.spec.name, "ready", port=30000)

    def work() -> object:
        forks = all_desired_forks(project, sandboxes)
        plan = plan_actions(project, sandboxes, actual, forks)
        assert not plan.start, "a converged pass must start nothing"
        assert not plan.stop, "a converged pass must stop nothing"
        return build_routes(1, project, sandboxes, [], actual, forks)

    return work


def timed_ms(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    print("\n== 6. Planning passes (pure work, one core) ==")
    sizes = (100, 1000)
    plans: dict[int, Callable[[], object]] = {}
    tables: dict[int, Callable[[], object]] = {}
    locals_: dict[int, Callable[[], object]] = {n: local_pass(n) for n in sizes}
    for count in sizes:
        cluster, bodies = cluster_with(count)
        probe = bodies[count // 2]
        name, key = probe["metadata"]["name"], probe["status"]["routingKey"]
        read = cluster.objects("shop", name)  # what one pass reads: baseline and its own
        assert plan_sandbox(probe, read, key, NOW, "router").actions == [], "must converge"
        plans[count] = lambda r=read, b=probe, k=key: plan_sandbox(b, r, k, NOW, "router")
        inputs = (cluster.custom("Sandbox"), cluster.custom("RouteGroup"), cluster.routed())
        tables[count] = lambda i=inputs: build_route_table(*i)
        print(f"{count:>5} sandboxes: {len(cluster.store)} objects, a pass reads {len(read)}")
    gc.collect()
    gc.freeze()  # the long-lived cluster objects out of the collector's scans, as a
    # long-running operator's would be; per-pass garbage is still collected
    # Rounds interleave the sizes, so the shared machine's drift falls on both alike.
    plan_ms: dict[int, list[float]] = {n: [] for n in sizes}
    table_ms: dict[int, list[float]] = {n: [] for n in sizes}
    local_ms: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(31):
        for count in sizes:
            plan_ms[count].append(timed_ms(plans[count]))
            table_ms[count].append(timed_ms(tables[count]))
            local_ms[count].append(timed_ms(locals_[count]))
    gc.unfreeze()
    plan = {n: statistics.median(v) for n, v in plan_ms.items()}
    table = {n: statistics.median(v) for n, v in table_ms.items()}
    local = {n: statistics.median(v) for n, v in local_ms.items()}
    for count in sizes:
        print(f"{count:>5} sandboxes: local reconciler pass p50 {local[count]:7.2f} ms")
    print(f"1,000 vs 100 sandboxes: local pass x{(local[1000] / 1000) / (local[100] / 100):.2f} "
          "per sandbox")
    print("Kubernetes operator, router mode:")
    for count in sizes:
        print(f"{count:>5} sandboxes: plan one Sandbox p50 {plan[count]:6.2f} ms (a resync of "
              f"all: {plan[count] * count / 1000:5.2f} s), routes table p50 "
              f"{table[count]:7.2f} ms")
    print(f"1,000 vs 100 sandboxes: one Sandbox's plan x{plan[1000] / plan[100]:.2f}, "
          f"routes table x{(table[1000] / 1000) / (table[100] / 100):.2f} per sandbox")


if __name__ == "__main__":
    main()
