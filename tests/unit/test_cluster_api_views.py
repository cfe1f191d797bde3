"""The operator API's views of the custom resources (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from laneway.core.kubernetes.objects import RenderError
from laneway.runtime.kubernetes.api import route_group_resource, sandbox_view

KEY = "k3y0000000ab"


def sandbox(generation: int, observed: int, status: str = "True") -> dict[str, Any]:
    return {"apiVersion": "laneway.dev/v1alpha1", "kind": "Sandbox",
            "metadata": {"name": "sb-a", "namespace": "shop", "uid": "u", "generation":
                         generation, "creationTimestamp": "2026-12-03T10:00:00Z"},
            "spec": {"ttl": "2h", "forks": [{"workload": {"name": "pricing"}, "image": "p:2",
                                             "env": [{"name": "API_TOKEN", "value": "s3"}]}]},
            "status": {"routingKey": KEY, "conditions": [
                {"type": "Ready", "status": status, "reason": "ForksReady",
                 "message": "1 forks ready", "observedGeneration": observed}]}}


def test_a_ready_condition_about_an_older_spec_is_not_ready() -> None:
    """`sandbox apply --wait` after an update must wait for the new spec's rollout."""
    assert sandbox_view(sandbox(1, 1))["status"]["phase"] == "ready"
    stale = sandbox_view(sandbox(2, 1))["status"]
    assert stale["phase"] == "pending"
    assert not stale["ready"]
    assert stale["message"] == "waiting for the operator to apply generation 2"


def test_the_view_has_what_the_cli_reads() -> None:
    view = sandbox_view(sandbox(1, 1))
    assert view["routingKey"] == KEY
    assert view["baggage"] == f"laneway-key={KEY}"
    assert view["forks"][0]["service"] == "pricing"
    assert view["forks"][0]["env"] == {"API_TOKEN": "s3"}
    assert view["expiresAt"] == pytest.approx(1796292000.0 + 7200)


@pytest.mark.parametrize(("doc", "message"), [
    ({"name": "Pay_4", "match": {"labels": {"team": "pay"}}}, "name: must be a DNS label"),
    ({"name": "pay", "match": {"lables": {"team": "pay"}}},
     "match.lables: unknown field; did you mean 'labels'?"),
    ({"name": "pay", "mach": {"labels": {"team": "pay"}}},
     "mach: unknown field; did you mean 'match'?"),
    ({"name": "pay", "match": {"labels": {}}}, "match.labels: required"),
])
def test_a_route_group_file_is_checked_like_a_sandbox_file(doc: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(RenderError) as caught:
        route_group_resource(doc, "shop")
    assert str(caught.value).startswith(message)


def test_secrets_are_masked_and_the_key_is_not() -> None:
    from laneway.runtime.kubernetes.api import _masked

    shown = _masked(sandbox_view(sandbox(1, 1)))
    assert shown["forks"][0]["env"] == {"API_TOKEN": "***"}
    assert shown["resource"]["spec"]["forks"][0]["env"] == [{"name": "API_TOKEN",
                                                             "value": "***"}]
    assert shown["baggage"] == f"laneway-key={KEY}"  # a header to copy, not a secret
    assert shown["routingKey"] == KEY
