"""Operator reconcile planning as pure functions: create, converge, update, delete, TTL, and a
fork whose baseline Deployment disappears."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from laneway.core.kubernetes import load_manifests, render_sandbox
from laneway.core.kubernetes.plan import FINALIZER, plan_sandbox

DATA = Path(__file__).parents[1] / "data" / "k8s"
KEY = "abc123def456"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def sandbox(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    doc["metadata"].update(creationTimestamp="2026-11-23T11:00:00Z", finalizers=[FINALIZER])
    doc["metadata"].update(changes)
    return doc


def apply(cluster: list[dict[str, Any]], plan: Any) -> list[dict[str, Any]]:
    """What the operator's handlers do with a plan, on an in-memory cluster."""
    objects = {(o["kind"], o["metadata"].get("namespace", "default"), o["metadata"]["name"]): o
               for o in cluster}
    for action in plan.actions:
        ident = (action.kind, action.namespace, action.name)
        if action.verb in ("create", "replace", "patch"):
            objects[ident] = copy.deepcopy(dict(action.body))
        elif action.verb == "delete":
            objects.pop(ident, None)
    return list(objects.values())


def test_create_then_converge() -> None:
    cluster = load_manifests(DATA)
    plan = plan_sandbox(sandbox(), cluster, KEY, NOW)
    verbs = sorted((a.verb, a.kind) for a in plan.actions)
    assert verbs == [("create", "Deployment"), ("create", "Deployment"), ("create", "Service"),
                     ("create", "Service"), ("create", "VirtualService"),
                     ("patch", "VirtualService")]
    assert plan.conditions[-1]["reason"] == "ForksStarting"
    cluster = apply(cluster, plan)
    again = plan_sandbox(sandbox(), cluster, KEY, NOW)
    assert again.actions == []  # idempotent
    assert again.conditions[-1]["status"] == "False"  # no fork has a pod yet
    assert again.conditions[-1]["message"] == (
        "waiting for pricing-lw-sb-a, currency-lw-sb-a to have an available pod")
    assert again.requeue_after == 3.0  # looked at again soon while forks start
    for obj in cluster:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "pricing-lw-sb-a":
            obj["status"] = {"availableReplicas": 1, "updatedReplicas": 1}
    partly = plan_sandbox(sandbox(), cluster, KEY, NOW)
    assert partly.conditions[-1]["message"] == (
        "waiting for currency-lw-sb-a to have an available pod")
    cluster = available(cluster)
    ready = plan_sandbox(sandbox(), cluster, KEY, NOW)
    assert ready.actions == []
    assert ready.conditions[-1]["reason"] == "ForksReady"
    assert ready.requeue_after is not None
    assert ready.requeue_after <= 3600  # the TTL (2h) is watched


def available(cluster: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the Deployment controller reports once every fork has rolled out."""
    for obj in cluster:
        if obj["kind"] == "Deployment" and "laneway.dev/sandbox" in obj["metadata"].get(
                "labels", {}):
            obj["metadata"]["generation"] = 2
            obj["status"] = {"observedGeneration": 2, "availableReplicas": 1,
                             "updatedReplicas": 1}
    return cluster


def test_update_replaces_only_what_changed() -> None:
    cluster = available(apply(load_manifests(DATA),
                              plan_sandbox(sandbox(), load_manifests(DATA), KEY, NOW)))
    changed = sandbox()
    changed["spec"]["forks"][0]["env"] = [{"name": "DISCOUNT", "value": "30"}]
    plan = plan_sandbox(changed, cluster, KEY, NOW)
    assert [(a.verb, a.name) for a in plan.actions] == [("replace", "pricing-lw-sb-a")]
    # Not Ready until the controller has rolled the new spec out.
    assert plan.conditions[-1]["message"] == (
        "waiting for pricing-lw-sb-a to have an available pod")
    rolled = apply(cluster, plan)
    fork = next(o for o in rolled if o["metadata"]["name"] == "pricing-lw-sb-a"
                and o["kind"] == "Deployment")
    fork["metadata"]["generation"] = 3  # the old pod is still the available one
    fork["status"] = {"observedGeneration": 2, "availableReplicas": 1, "updatedReplicas": 1}
    assert plan_sandbox(changed, rolled, KEY, NOW).conditions[-1]["reason"] == "ForksStarting"
    fork["status"]["observedGeneration"] = 3
    assert plan_sandbox(changed, rolled, KEY, NOW).conditions[-1]["reason"] == "ForksReady"
    fewer = sandbox()
    fewer["spec"]["forks"] = fewer["spec"]["forks"][:1]
    plan = plan_sandbox(fewer, cluster, KEY, NOW)
    deleted = sorted(a.name for a in plan.actions if a.verb == "delete")
    assert deleted == ["currency-lw-sb-a", "currency-lw-sb-a"]  # its Deployment and Service


def test_deletion_removes_what_it_made_and_keeps_the_teams_routes() -> None:
    original = load_manifests(DATA)
    cluster = apply(original, plan_sandbox(sandbox(), original, KEY, NOW))
    plan = plan_sandbox(sandbox(deletionTimestamp="2026-11-23T12:00:00Z"), cluster, KEY, NOW)
    after = apply(cluster, plan)
    assert plan.actions[-1].verb == "remove-finalizer"
    names = sorted((o["kind"], o["metadata"]["name"]) for o in after)
    assert names == sorted((o["kind"], o["metadata"]["name"]) for o in original)
    team_vs = next(o for o in after if o["kind"] == "VirtualService")
    assert team_vs["spec"] == next(o for o in original if o["kind"] == "VirtualService")["spec"]


def test_expired_ttl_deletes_the_sandbox() -> None:
    plan = plan_sandbox(sandbox(), load_manifests(DATA), KEY, NOW + timedelta(hours=2))
    assert [a.verb for a in plan.actions] == ["delete-sandbox"]
    assert plan.conditions[0]["reason"] == "Expired"


def test_a_vanished_baseline_deployment_is_reported_not_destroyed() -> None:
    cluster = apply(load_manifests(DATA), plan_sandbox(sandbox(), load_manifests(DATA), KEY, NOW))
    without = [o for o in cluster if not (o["kind"] == "Deployment"
                                          and o["metadata"]["name"] == "pricing")]
    plan = plan_sandbox(sandbox(), without, KEY, NOW)
    assert plan.actions == []
    assert plan.conditions[0]["reason"] == "RenderFailed"
    assert "no Deployment 'pricing'" in plan.conditions[0]["message"]
    assert plan.requeue_after == 10.0


def test_first_pass_adds_the_finalizer() -> None:
    doc = sandbox()
    doc["metadata"]["finalizers"] = []
    plan = plan_sandbox(doc, load_manifests(DATA), KEY, NOW)
    assert plan.actions[0].verb == "add-finalizer"
    assert render_sandbox(doc, load_manifests(DATA), KEY)  # same objects either way


def with_server_defaults(cluster: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an API server hands back: the same objects with defaults filled in."""
    out = copy.deepcopy(cluster)
    for obj in out:
        if obj["kind"] == "Deployment":
            obj["spec"].setdefault("strategy", {"type": "RollingUpdate"})
            for container in obj["spec"]["template"]["spec"]["containers"]:
                container.setdefault("imagePullPolicy", "IfNotPresent")
                container.setdefault("terminationMessagePath", "/dev/termination-log")
            obj["metadata"]["uid"] = "8d1c7f1e-0000-4000-8000-000000000001"
        if obj["kind"] == "Service":
            obj["spec"].setdefault("clusterIP", "10.96.0.12")
            obj["spec"].setdefault("sessionAffinity", "None")
    return out


def test_server_defaults_cause_no_changes_in_either_mode() -> None:
    for mode in ("istio", "router"):
        cluster = load_manifests(DATA)
        cluster = apply(cluster, plan_sandbox(sandbox(), cluster, KEY, NOW, mode))
        again = plan_sandbox(sandbox(), with_server_defaults(cluster), KEY, NOW, mode)
        assert again.actions == [], mode


def test_router_mode_injects_the_baseline_once_and_leaves_it_on_deletion() -> None:
    cluster = load_manifests(DATA)
    plan = plan_sandbox(sandbox(), cluster, KEY, NOW, "router")
    assert sorted((a.verb, a.kind, a.name) for a in plan.actions) == [
        ("create", "Deployment", "currency-lw-sb-a"), ("create", "Deployment", "pricing-lw-sb-a"),
        ("create", "Service", "currency-lw-sb-a"), ("create", "Service", "pricing-lw-sb-a"),
        ("replace", "Deployment", "currency"), ("replace", "Deployment", "pricing"),
        ("replace", "Service", "currency"), ("replace", "Service", "pricing")]
    cluster = apply(cluster, plan)
    other = sandbox(name="sb-b")
    plan_b = plan_sandbox(other, cluster, "bbbbbbbbbbbb", NOW, "router")
    assert all(a.verb == "create" for a in plan_b.actions)  # the router is there already
    cluster = apply(cluster, plan_b)
    gone = plan_sandbox(sandbox(deletionTimestamp="2026-11-23T12:00:00Z"), cluster, KEY, NOW,
                        "router")
    assert sorted((a.verb, a.name) for a in gone.actions if a.kind != "Sandbox") == [
        ("delete", "currency-lw-sb-a"), ("delete", "currency-lw-sb-a"),
        ("delete", "pricing-lw-sb-a"), ("delete", "pricing-lw-sb-a")]
    # Removing the router would restart the baseline's pods: it stays for the next sandbox.


def test_route_group_plan_routes_conflicts_stale_routes_and_deletion() -> None:
    from laneway.core.kubernetes.plan import plan_route_group

    cluster = load_manifests(DATA)
    first = sandbox()
    second = sandbox(name="sb-b")
    second["spec"]["forks"] = second["spec"]["forks"][:1]  # pricing only
    cluster = apply(cluster, plan_sandbox(first, cluster, KEY, NOW))
    cluster = apply(cluster, plan_sandbox(second, cluster, "bbbbbbbbbbbb", NOW))
    group = {"kind": "RouteGroup", "metadata": {"name": "pay", "namespace": "shop",
                                                "finalizers": [FINALIZER]},
             "spec": {"match": {"labels": {"team": "pay"}}}}
    plan, status = plan_route_group(group, [first, second], cluster, "group0000000")
    assert status["sandboxes"] == ["sb-a", "sb-b"]
    assert status["conflicts"] == [{"service": "pricing", "sandboxes": ["sb-a", "sb-b"]}]
    assert plan.conditions[0]["reason"] == "Conflict"
    cluster = apply(cluster, plan)
    routes = {vs["metadata"]["name"]: vs["spec"]["http"] for vs in cluster
              if vs["kind"] == "VirtualService"}
    assert routes["pricing"][0]["name"] == "laneway-rg-pay"
    assert routes["pricing"][0]["directResponse"]["status"] == 503
    currency_route = next(r for r in routes["laneway-currency"] if r["name"] == "laneway-rg-pay")
    assert currency_route["route"][0]["destination"]["host"].startswith("currency-lw-sb-a.")
    assert plan_route_group(group, [first, second], cluster, "group0000000")[0].actions == []

    # sb-a leaves the group: its currency fork no longer takes the group's key.
    first["spec"]["labels"] = {"team": "other"}
    plan, status = plan_route_group(group, [first, second], cluster, "group0000000")
    assert status["sandboxes"] == ["sb-b"]
    assert plan.conditions[0]["reason"] == "Reconciled"
    cluster = apply(cluster, plan)
    assert not [r for vs in cluster if vs["kind"] == "VirtualService"
                for r in vs["spec"]["http"] if r["name"] == "laneway-rg-pay"
                and vs["metadata"]["name"] != "pricing"]
    # Deleting the group takes its routes out and leaves everyone else's.
    group["metadata"]["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    plan, _ = plan_route_group(group, [first, second], cluster, "group0000000")
    assert ("remove-finalizer", "RouteGroup") in [(a.verb, a.kind) for a in plan.actions]
    cluster = apply(cluster, plan)
    names = [r["name"] for vs in cluster if vs["kind"] == "VirtualService"
             for r in vs["spec"]["http"]]
    assert "laneway-rg-pay" not in names
    assert names.count("canary-by-header") == 1
    assert "laneway-sb-a" in names


def test_a_resource_kubectl_let_through_is_render_failed_not_a_crash() -> None:
    """A TTL that is no duration, or two forks of one Deployment (which would make one fork
    Deployment that each pass rewrites), in a Sandbox applied past the API's checks."""
    bad_ttl = sandbox()
    bad_ttl["spec"]["ttl"] = "2 hours"
    plan = plan_sandbox(bad_ttl, load_manifests(DATA), KEY, NOW)
    assert plan.conditions[0]["reason"] == "RenderFailed"
    assert plan.conditions[0]["message"].startswith("ttl: '2 hours' is not a duration")
    assert not [a for a in plan.actions if a.kind in ("Deployment", "Service")]
    twice = sandbox()
    twice["spec"]["forks"].append(copy.deepcopy(twice["spec"]["forks"][0]))
    plan = plan_sandbox(twice, load_manifests(DATA), KEY, NOW)
    assert plan.conditions[0]["reason"] == "RenderFailed"
    assert "forks[2].workload: pricing is forked by forks[0] already" in plan.conditions[0][
        "message"]
    assert plan.requeue_after == 10.0
