"""A plain sandbox file into the `Sandbox` custom resource (`laneway k8s render`/`convert`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from laneway.core.kubernetes import RenderError, load_manifests, render_sandbox
from laneway.core.kubernetes.convert import sandbox_resource

DATA = Path(__file__).parents[1] / "data" / "k8s"
RESOURCE = yaml.safe_load((DATA / "sandbox.yaml").read_text())
PLAIN = {
    "name": "sb-a",
    "namespace": "shop",
    "labels": {"team": "pay"},
    "ttl": "2h",
    "forks": [
        {"workload": "pricing", "image": "registry.example/pricing:pr-123",
         "env": {"DISCOUNT": 20}},
        {"workload": {"name": "currency"}, "env": [{"name": "RATES", "value": "fixed"}]},
    ],
}


def test_a_plain_file_renders_exactly_as_its_custom_resource() -> None:
    resource = sandbox_resource(PLAIN)
    assert resource["metadata"] == {"name": "sb-a", "namespace": "shop"}
    assert resource["spec"]["forks"][0] == {
        "workload": {"kind": "Deployment", "name": "pricing"},
        "image": "registry.example/pricing:pr-123",
        "env": [{"name": "DISCOUNT", "value": "20"}]}
    baseline = load_manifests(DATA)
    assert render_sandbox(resource, baseline, "abc123def456") == \
        render_sandbox(RESOURCE, baseline, "abc123def456")
    # The resource itself passes through; a namespace is given only where none is named.
    assert sandbox_resource(RESOURCE, "other") == RESOURCE
    assert sandbox_resource({**PLAIN, "namespace": None}, "team-b")["metadata"]["namespace"] \
        == "team-b"
    assert sandbox_resource({**PLAIN, "namespace": None})["metadata"]["namespace"] == "default"


@pytest.mark.parametrize(("change", "message"), [
    ({"forks": [{"service": "pricing"}]}, "forks[0].service: only for forks on this machine"),
    ({"forks": [{"workload": "pricing", "address": "127.0.0.1:9000"}]},
     "forks[0].address: only for forks on this machine; an address is a process on your "
     "machine"),
    ({"forks": [{"workload": "pricing", "run": "python p.py"}]}, "give `image`"),
    ({"forks": [{"workload": "pricing", "imgae": "x"}]},
     "forks[0].imgae: unknown field; did you mean 'image'?"),
    ({"lables": {}}, "lables: unknown field; did you mean 'labels'?"),
    ({"forks": []}, "forks: must list at least one fork"),
    ({"forks": [{"image": "x"}]}, "forks[0].workload: must name a Deployment"),
    ({"forks": [{"workload": {"name": "p", "kind": "StatefulSet"}}]},
     "workload.kind: only Deployment"),
    ({"forks": [{"workload": {"name": "p", "namespace": "elsewhere"}}]},
     "must be the sandbox's own (shop)"),
    ({"forks": [{"workload": "p", "env": [{"value": "x"}]}]}, "forks[0].env[0]: must be"),
    ({"name": "Not_A_Label"}, "name: must be a DNS label"),
    ({"kind": "Deployment"}, "kind: a custom resource here must be kind Sandbox"),
])
def test_what_cannot_be_a_fork_on_kubernetes_is_refused_with_why(
        change: dict[str, object], message: str) -> None:
    with pytest.raises(RenderError) as caught:
        sandbox_resource({**PLAIN, **change})
    assert message in str(caught.value)


@pytest.mark.parametrize(("doc", "message"), [
    ({"name": "sb", "ttl": "2 hours", "forks": [{"workload": "pricing", "image": "p:2"}]},
     "ttl: '2 hours' is not a duration"),
    ({"name": "sb", "forks": [{"workload": "pricing", "image": "p:1"},
                              {"workload": {"name": "pricing"}, "image": "p:2"}]},
     "forks[1].workload: pricing is forked by forks[0] already"),
    ({"apiVersion": "laneway.dev/v1alpha1", "kind": "Sandbox", "metadata": {"name": "sb"},
      "spec": {"ttl": "soon", "forks": [{"workload": {"name": "pricing"}}]}},
     "ttl: 'soon' is not a duration"),
])
def test_a_ttl_and_one_fork_per_deployment_are_checked_in_both_shapes(
        doc: dict[str, object], message: str) -> None:
    with pytest.raises(RenderError) as caught:
        sandbox_resource(doc)
    assert str(caught.value).startswith(message)
