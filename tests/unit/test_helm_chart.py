"""The Helm chart (charts/laneway) installs what `laneway k8s install --print` prints: rendered
by Helm's own engine, every object is valid against the Kubernetes 1.35 schemas and equals,
after parsing, an object of `install_manifests(namespace, image, mode)`, so the two cannot
drift apart.

Who renders the chart, and why: Helm itself, from `helm-python-sdk` (import `helm_python`, a dev
dependency). Its wheel (manylinux_2_28 x86_64 here; the project also builds macOS and Windows
ones, not tried, and none for Linux arm64 yet) bundles `libhelm_c`, a C ABI compiled from
Helm's Go SDK (v4.2.3: `helm.sh/helm/v4/pkg/engine`, Go's text/template, sprig), which it
calls through ctypes: no `helm` binary, Go toolchain or compiler is needed, and `Chart.render`
is `helm template` (values.yaml coalesced with the given values, values.schema.json enforced,
`.Release.Namespace` set) without a cluster or a network (it was run inside a network
namespace with no interface). The other candidate, `helm-sdkpy`, was
ruled out: it needs Python >= 3.12 (laneway supports 3.11) and has no offline render, only
release actions against a cluster. So no subset renderer stands in for Helm here.

What differs on purpose, and is checked to differ only so:
- Helm's labels on each object's metadata (`app.kubernetes.io/instance`, `managed-by`,
  `version`, `helm.sh/chart`); selectors and pod labels are the same as install_manifests'.
- No Namespace object: the release namespace is the operator's (`helm install -n NS
  --create-namespace`); a Namespace in the chart would be deleted with the release, and
  everything in it.
- The CRDs are files in `crds/` (Helm installs them before the templates, and never upgrades
  or deletes them), equal to `crds()`.
- Values with no install_manifests counterpart (nodeSelector, tolerations, affinity,
  podAnnotations, imagePullSecrets, image.pullPolicy) render nothing when empty, which is their
  default, and exactly where they belong when set.
"""

from __future__ import annotations

import copy
from importlib.metadata import version
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from laneway.core.kubernetes.manifests import crds, install_manifests

CHART = Path(__file__).parents[2] / "charts" / "laneway"
K8S_VERSION = "1.35"
RELEASE = "laneway"
CRDS_HEADER = (
    "# Generated from laneway.core.kubernetes.manifests.crds(): do not edit by hand.\n"
    "# tests/unit/test_helm_chart.py fails when it differs, and prints how to regenerate.\n")

Key = tuple[str, str]


def crd_files() -> dict[str, str]:
    return {f"{crd['spec']['names']['plural']}.yaml":
            CRDS_HEADER + yaml.safe_dump(crd, sort_keys=False) for crd in crds()}


def render(values: dict[str, Any] | None, namespace: str) -> dict[Key, dict[str, Any]]:
    """The chart's objects as `helm template RELEASE charts/laneway -n NAMESPACE` renders them
    (without the CRDs: Helm installs crds/ as files, unrendered)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=namespace)
    objects: dict[Key, dict[str, Any]] = {}
    for template, text in rendered.items():
        if template.endswith("NOTES.txt"):
            continue
        for obj in yaml.safe_load_all(text):
            if obj is None:
                continue
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in objects, f"{template}: a second {key}"
            objects[key] = obj
    return objects


def expected(namespace: str, **kwargs: Any) -> dict[Key, dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o
            for o in install_manifests(namespace=namespace, **kwargs)
            if o["kind"] not in ("CustomResourceDefinition", "Namespace")}


def without_helm_labels(objects: dict[Key, dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The objects with Helm's own labels taken off, after checking each carries exactly
    those."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    helm_labels = {"app.kubernetes.io/instance": RELEASE,
                   "app.kubernetes.io/managed-by": "Helm",
                   "app.kubernetes.io/version": chart["appVersion"],
                   "helm.sh/chart": f"laneway-{chart['version']}"}
    stripped = copy.deepcopy(objects)
    for key, obj in stripped.items():
        labels = obj["metadata"]["labels"]
        assert {k: labels.pop(k, None) for k in helm_labels} == helm_labels, key
    return stripped


def test_crds_folder_holds_the_crds_install_manifests_prints() -> None:
    files = {path.name: yaml.safe_load(path.read_text())
             for path in sorted((CHART / "crds").glob("*.yaml"))}
    assert files == {name: yaml.safe_load(text) for name, text in crd_files().items()}, (
        "charts/laneway/crds/ differs from crds(): "
        "`.venv/bin/python tests/unit/test_helm_chart.py` writes it anew")
    for crd in files.values():
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("values", "namespace", "manifest_args"),
    [
        pytest.param(None, "laneway-system", {}, id="defaults"),
        pytest.param({"mode": "router", "image": {"repository": "registry.example/laneway",
                                                  "tag": "0.1.0-rc1"}},
                     "lw-ops", {"mode": "router", "image": "registry.example/laneway:0.1.0-rc1"},
                     id="router-custom-image"),
        pytest.param({"mode": "istio", "image": {"repository": "registry.example:5000/lw/op",
                                                 "tag": "sha-4f2a"}},
                     "laneway-system", {"image": "registry.example:5000/lw/op:sha-4f2a"},
                     id="istio-registry-with-port"),
    ],
)
def test_chart_renders_what_install_manifests_returns(
    values: dict[str, Any] | None, namespace: str, manifest_args: dict[str, Any],
) -> None:
    objects = render(values, namespace)
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert without_helm_labels(objects) == expected(namespace, **manifest_args)


def test_cluster_operator_values_land_where_they_belong() -> None:
    values = {
        "image": {"repository": "registry.example/laneway", "tag": "0.1.0",
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"},
                      "limits": {"memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux", "pool": "system"},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "podAnnotations": {"prometheus.io/scrape": "false"},
    }
    objects = render(values, "laneway-system")
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    objects = without_helm_labels(objects)
    pod = objects[("Deployment", "laneway-operator")]["spec"]["template"]
    container = pod["spec"]["containers"][0]

    # Each value where Kubernetes reads it, and nowhere else: taken off, the rest is exactly
    # install_manifests' (the resources replaced, since a map given merges into the default).
    assert pod["metadata"].pop("annotations") == values["podAnnotations"]
    for field in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity"):
        assert pod["spec"].pop(field) == values[field], field
    assert container.pop("imagePullPolicy") == "Always"
    assert container["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"},
                                      "limits": {"memory": "1Gi"}}
    want = expected("laneway-system", image="registry.example/laneway:0.1.0")
    want[("Deployment", "laneway-operator")]["spec"]["template"]["spec"]["containers"][0][
        "resources"] = values["resources"]
    assert objects == want


def test_empty_tag_means_the_chart_app_version_which_is_laneways() -> None:
    objects = render({"image": {"repository": "laneway", "tag": ""}}, "laneway-system")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version("laneway")  # bumped together with pyproject's
    assert without_helm_labels(objects) == expected("laneway-system",
                                                    image=f"laneway:{version('laneway')}")


@pytest.mark.parametrize(
    ("values", "path"),
    [({"mode": "linkerd"}, "/mode"),
     ({"image": {"repository": "laneway", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
     ({"replicas": 2}, "replicas")],  # one operator at a time: not a value
)
def test_values_outside_the_schema_are_refused_by_name(values: dict[str, Any],
                                                       path: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=path):
        render(values, "laneway-system")


def test_helm_lint_strict_finds_nothing_to_warn_about() -> None:
    report = helm.lint(CHART, strict=True, namespace="laneway-system")
    assert report["errors"] == []
    # Severity 1 is information (an icon "is recommended"); 2 and 3 are warnings and errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


if __name__ == "__main__":  # regenerates crds/ after a change to crds()
    for stale in (CHART / "crds").glob("*.yaml"):
        stale.unlink()
    for name, text in crd_files().items():
        (CHART / "crds" / name).write_text(text)
