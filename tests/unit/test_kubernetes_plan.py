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
    assert plan.conditions[-1]["status"] == "True"
    cluster = apply(cluster, plan)
    again = plan_sandbox(sandbox(), cluster, KEY, NOW)
    assert again.actions == []  # idempotent
    assert again.requeue_after is not None
    assert again.requeue_after <= 3600  # the TTL (2h) is watched


def test_update_replaces_only_what_changed() -> None:
    cluster = apply(load_manifests(DATA), plan_sandbox(sandbox(), load_manifests(DATA), KEY, NOW))
    changed = sandbox()
    changed["spec"]["forks"][0]["env"] = [{"name": "DISCOUNT", "value": "30"}]
    plan = plan_sandbox(changed, cluster, KEY, NOW)
    assert [(a.verb, a.name) for a in plan.actions] == [("replace", "pricing-lw-sb-a")]
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
