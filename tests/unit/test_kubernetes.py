"""Kubernetes rendering: the regexes under RE2 (as Envoy evaluates them), objects valid against
the real Kubernetes and Istio schemas, and the team's VirtualService routes kept in order."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import re2
import yaml

from laneway.core.baggage import key_from_baggage, key_from_tracestate
from laneway.core.kubernetes import (
    RenderError,
    baggage_regex,
    load_manifests,
    render_sandbox,
    tracestate_regex,
)

DATA = Path(__file__).parents[1] / "data" / "k8s"
ISTIO = Path(__file__).parents[3] / "shared" / "data" / "istio" / "crds-networking.yaml"
KEY = "abc123def456"
K8S_VERSION = "1.35.0"


def envoy_match(regex: str, headers: list[str]) -> bool:
    # Envoy joins several headers of one name with "," and matches the whole value.
    return re2.fullmatch(regex, ",".join(headers)) is not None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([f"laneway-key={KEY}"], True),
        ([f"a=1,laneway-key={KEY}"], True),
        ([f"a=1, laneway-key={KEY} , b=2"], True),
        ([f"laneway-key = {KEY};prop=1;flag,b=2"], True),
        (["a=1", f"laneway-key={KEY}"], True),  # several baggage headers
        (["laneway-key=%61bc123def456"], True),  # percent-encoded
        (["laneway-key=%61%62%63123def456"], True),
        ([f"laneway-key={KEY}x"], False),
        ([f"laneway-key={KEY[:-1]}"], False),
        ([f"xlaneway-key={KEY}"], False),
        ([f"laneway-keys={KEY}"], False),
        ([f"a=1;laneway-key={KEY}"], False),  # a property of another member
        ([f"a=laneway-key={KEY}"], False),
        (["laneway-key=other0000000"], False),
        ([""], False),
    ],
)
def test_baggage_regex_cases(headers: list[str], expected: bool) -> None:
    assert envoy_match(baggage_regex(KEY), headers) is expected
    assert (key_from_baggage(",".join(headers).encode()) == KEY) is expected  # the same contract


@pytest.mark.parametrize(
    ("header", "expected"),
    [(f"laneway={KEY}", True), (f"rojo=00f067aa0ba902b7,laneway={KEY}", True),
     (f"laneway={KEY} ,congo=t61", True), (f"laneway={KEY}x", False),
     (f"xlaneway={KEY}", False), (f"laneway-key={KEY}", False)],
)
def test_tracestate_regex_cases(header: str, expected: bool) -> None:
    assert envoy_match(tracestate_regex(KEY), [header]) is expected
    assert (key_from_tracestate(header.encode()) == KEY) is expected


# The regexes against the router on the shared table and generated baggage (several members,
# encodings): tests/unit/test_baggage_regex.py.


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    return render_sandbox(doc, load_manifests(DATA), KEY)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_objects_are_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    assert sorted(o["kind"] for o in rendered) == ["Deployment", "Deployment", "Service",
                                                   "Service", "VirtualService",
                                                   "VirtualService"]
    for obj in rendered:
        if obj["kind"] != "VirtualService":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_virtual_services_are_valid_istio(rendered: list[dict[str, Any]]) -> None:
    crds = [d for d in yaml.safe_load_all(ISTIO.read_text()) if d]
    crd = next(d for d in crds if d["spec"]["names"]["kind"] == "VirtualService")
    for vs in by_kind(rendered, "VirtualService"):
        version = vs["apiVersion"].split("/")[1]
        schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]
                      if v["name"] == version and v["served"])
        jsonschema.validate(vs, schema)
        for route in vs["spec"]["http"]:  # the regexes compile under RE2
            for match in route.get("match", []):
                for header in match.get("headers", {}).values():
                    if "regex" in header:
                        re2.compile(header["regex"])


def test_the_teams_routes_stay_unchanged_and_in_order(rendered: list[dict[str, Any]]) -> None:
    original = next(o for o in load_manifests(DATA) if o["kind"] == "VirtualService")
    merged = next(o for o in by_kind(rendered, "VirtualService")
                  if o["metadata"]["name"] == "pricing")
    routes = merged["spec"]["http"]
    assert routes[0]["name"] == "laneway-sb-a"
    assert routes[1:] == original["spec"]["http"]
    assert routes[0]["route"][0]["destination"]["host"] == \
        "pricing-lw-sb-a.shop.svc.cluster.local"
    own = next(o for o in by_kind(rendered, "VirtualService")
               if o["metadata"]["name"] == "laneway-currency")
    assert own["spec"]["http"][-1]["route"][0]["destination"]["host"] == \
        "currency.shop.svc.cluster.local"  # everything else still goes to the baseline


def test_forks_are_out_of_the_baseline_selector(rendered: list[dict[str, Any]]) -> None:
    baseline = {o["metadata"]["name"]: o for o in load_manifests(DATA) if o["kind"] == "Service"}
    for dep in by_kind(rendered, "Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        selector = dep["spec"]["selector"]["matchLabels"]
        assert all(labels[k] == v for k, v in selector.items())
        for svc in baseline.values():
            assert not all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    for svc in by_kind(rendered, "Service"):
        (dep,) = [d for d in by_kind(rendered, "Deployment") if all(
            d["spec"]["template"]["metadata"]["labels"].get(k) == v
            for k, v in svc["spec"]["selector"].items())]
        assert dep["metadata"]["labels"]["laneway.dev/sandbox"] == "sb-a"


def test_fork_patches_image_and_env(rendered: list[dict[str, Any]]) -> None:
    pricing = next(d for d in by_kind(rendered, "Deployment")
                   if d["metadata"]["name"] == "pricing-lw-sb-a")
    container = pricing["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/pricing:pr-123"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"CURRENCY_URL": "http://currency:8080", "DISCOUNT": "20",
                   "LANEWAY_SANDBOX": "sb-a", "LANEWAY_ROUTING_KEY": KEY}
    assert pricing["spec"]["replicas"] == 1
    assert "deployment.kubernetes.io/revision" not in pricing["metadata"].get("annotations", {})
    sidecar = pricing["spec"]["template"]["spec"]["containers"][1]
    assert sidecar["image"] == "registry.example/metrics:2"


def test_render_errors_name_the_field() -> None:
    manifests = load_manifests(DATA)
    doc = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    doc["spec"]["forks"][0]["workload"]["name"] = "ghost"
    with pytest.raises(RenderError, match=r"spec.forks\[0\].workload: no Deployment 'ghost'"):
        render_sandbox(doc, manifests, KEY)
    doc = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    doc["spec"]["forks"][0]["container"] = "nope"
    with pytest.raises(RenderError, match=r"spec.forks\[0\].container: no container 'nope'"):
        render_sandbox(doc, manifests, KEY)


def test_crds_are_valid_and_accept_the_sample_sandbox() -> None:
    from laneway.core.kubernetes.manifests import crds

    definitions = crds()
    for crd in definitions:
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    schema = definitions[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    sample = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    jsonschema.validate(sample, schema)
    sample["spec"]["forks"] = []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sample, schema)


def test_install_manifests_are_valid_kubernetes() -> None:
    from laneway.core.kubernetes.manifests import install_manifests

    objects = install_manifests()
    assert [o["kind"] for o in objects] == ["CustomResourceDefinition",
                                            "CustomResourceDefinition", "Namespace",
                                            "ServiceAccount", "ClusterRole",
                                            "ClusterRoleBinding", "Deployment", "Service",
                                            "ClusterRole", "ClusterRole"]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    role = next(o for o in objects if o["kind"] == "ClusterRole")
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"]
               for rule in role["rules"])  # least privilege: nothing wildcarded


def test_route_group_routes_and_conflicts() -> None:
    from laneway.core.kubernetes.groups import render_route_group

    baseline = load_manifests(DATA)
    first = yaml.safe_load((DATA / "sandbox.yaml").read_text())  # sb-a: pricing, currency
    second = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    second["metadata"]["name"] = "sb-b"
    second["spec"]["forks"] = second["spec"]["forks"][1:]  # currency only
    cluster = list(baseline)
    for sandbox, key in ((first, KEY), (second, "zzz000000000")):
        rendered = render_sandbox(sandbox, cluster, key)
        names = {(o["kind"], o["metadata"]["name"]) for o in rendered}
        cluster = [o for o in cluster if (o["kind"], o["metadata"]["name"]) not in names]
        cluster += rendered
    group = {"apiVersion": "laneway.dev/v1alpha1", "kind": "RouteGroup",
             "metadata": {"name": "pay", "namespace": "shop"},
             "spec": {"match": {"labels": {"team": "pay"}}}}
    objects, status = render_route_group(group, [first, second], cluster, "group0000000")
    assert status["sandboxes"] == ["sb-a", "sb-b"]
    assert status["conflicts"] == [{"service": "currency", "sandboxes": ["sb-a", "sb-b"]}]
    crds = [d for d in yaml.safe_load_all(ISTIO.read_text()) if d]
    crd = next(d for d in crds if d["spec"]["names"]["kind"] == "VirtualService")
    schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]
                  if v["name"] == "v1")
    by_name = {o["metadata"]["name"]: o for o in objects}
    for vs in objects:
        jsonschema.validate(vs, schema)
    pricing = by_name["pricing"]["spec"]["http"]
    assert pricing[0]["name"] == "laneway-rg-pay"
    assert pricing[0]["route"][0]["destination"]["host"] == \
        "pricing-lw-sb-a.shop.svc.cluster.local"
    assert [r["name"] for r in pricing[1:]] == ["laneway-sb-a", "canary-by-header", "default"]
    currency = by_name["laneway-currency"]["spec"]["http"][0]
    assert currency["directResponse"]["status"] == 503
    assert envoy_match(currency["match"][0]["headers"]["baggage"]["regex"],
                       ["laneway-key=group0000000"])


# Router mode: the laneway router as a sidecar in front of the baseline's pods.

MULTI_PORT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  template:
    metadata: {labels: {app: orders}}
    spec:
      containers:
        - name: orders
          image: registry.example/orders:3
          ports: [{name: web, containerPort: 9000}, {name: admin, containerPort: 9001},
                  {name: grpc, containerPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  selector: {app: orders}
  ports: [{name: http, port: 80, targetPort: web}, {name: http-admin, port: 9001},
          {name: grpc, port: 9090, targetPort: grpc}]
"""


@pytest.fixture(scope="module")
def rendered_router() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    return render_sandbox(doc, load_manifests(DATA), KEY, mode="router")


def test_router_mode_objects_are_valid_kubernetes(
    rendered_router: list[dict[str, Any]],
) -> None:
    assert sorted((o["kind"], o["metadata"]["name"]) for o in rendered_router) == [
        ("Deployment", "currency"), ("Deployment", "currency-lw-sb-a"),
        ("Deployment", "pricing"), ("Deployment", "pricing-lw-sb-a"),
        ("Service", "currency"), ("Service", "currency-lw-sb-a"),
        ("Service", "pricing"), ("Service", "pricing-lw-sb-a")]  # and no VirtualService
    for obj in rendered_router:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_router_mode_puts_the_router_in_front_of_the_baseline(
    rendered_router: list[dict[str, Any]],
) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered_router}
    service = objects[("Service", "pricing")]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": 15080}]
    assert service["spec"]["selector"] == {"app": "pricing"}  # the same pods as before
    assert service["metadata"]["labels"]["laneway.dev/router"] == "on"
    assert service["metadata"]["annotations"]["laneway.dev/target-ports"] == '{"8080": 8080}'
    pod = objects[("Deployment", "pricing")]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["pricing", "sidecar-metrics",
                                                      "laneway-router"]
    router = pod["containers"][-1]
    assert router["command"] == ["python", "-m", "laneway.router"]
    assert router["args"][router["args"].index("--listen") + 1] == "pricing.shop=15080"
    assert "http://laneway-operator.laneway-system.svc:8790/v1/routes" in router["args"]
    token = pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "laneway-routes"
    assert pod["containers"][0]["image"] == "registry.example/pricing:1.4.0"  # unchanged
    # The fork carries no router (keyed requests reach it routed) and its Service goes
    # straight to the application's port.
    fork_pod = objects[("Deployment", "pricing-lw-sb-a")]["spec"]["template"]["spec"]
    assert "laneway-router" not in [c["name"] for c in fork_pod["containers"]]
    assert "volumes" not in fork_pod
    fork_svc = objects[("Service", "pricing-lw-sb-a")]
    assert fork_svc["spec"]["ports"][0]["targetPort"] == 8080
    assert fork_svc["metadata"]["labels"]["laneway.dev/fork-of"] == "pricing"


def listens(args: list[str]) -> list[str]:
    """The values of a sidecar's `--listen` flags."""
    return [args[i + 1] for i, a in enumerate(args) if a == "--listen"]


def _merged(baseline: list[dict[str, Any]], rendered: list[dict[str, Any]]) -> list[
        dict[str, Any]]:
    """The cluster after applying `rendered`: objects of the same kind and name replaced."""
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    return [o for o in baseline if (o["kind"], o["metadata"]["name"]) not in names] + rendered


def test_router_injection_is_idempotent_and_forks_copy_the_original(
    rendered_router: list[dict[str, Any]],
) -> None:
    doc = yaml.safe_load((DATA / "sandbox.yaml").read_text())
    cluster = _merged(load_manifests(DATA), rendered_router)
    again = render_sandbox(doc, cluster, KEY, mode="router")
    assert again == rendered_router  # one router, the original targetPorts kept


def test_router_mode_resolves_named_ports_and_serves_each_service_port() -> None:
    baseline = list(yaml.safe_load_all(MULTI_PORT))
    doc = {"kind": "Sandbox", "metadata": {"name": "sb-o", "namespace": "shop"},
           "spec": {"forks": [{"workload": {"name": "orders"}}]}}
    objects = {(o["kind"], o["metadata"]["name"]): o
               for o in render_sandbox(doc, baseline, KEY, mode="router")}
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    service = objects[("Service", "orders")]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [15080, 15081, 15082]
    assert service["metadata"]["annotations"]["laneway.dev/target-ports"] == \
        '{"80": 9000, "9001": 9001, "9090": 9090}'
    assert "laneway.dev/unrouted-ports" not in service["metadata"]["annotations"]
    args = objects[("Deployment", "orders")]["spec"]["template"]["spec"]["containers"][-1][
        "args"]
    assert listens(args) == ["orders.shop:http=15080", "orders.shop:http-admin=15081",
                             "orders.shop:grpc=15082/grpc"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--baseline"] == [
        "orders.shop:http=127.0.0.1:9000", "orders.shop:http-admin=127.0.0.1:9001",
        "orders.shop:grpc=127.0.0.1:9090"]
    fork_svc = objects[("Service", "orders-lw-sb-o")]
    assert [p["targetPort"] for p in fork_svc["spec"]["ports"]] == [9000, 9001, 9090]

    from laneway.core.kubernetes.table import build_route_table

    injected = [dict(o, metadata={**o["metadata"], "namespace": "shop"})
                for o in objects.values() if o["kind"] == "Service"]
    table = build_route_table([], [], injected)
    assert sorted(table.baseline) == ["orders.shop:grpc", "orders.shop:http",
                                      "orders.shop:http-admin"]
    first = render_sandbox(doc, baseline, KEY, mode="router")
    assert render_sandbox(doc, _merged(baseline, first), KEY, mode="router") == first
    # Injected before gRPC ports were routed: the grpc port still went to the application.
    # The next pass puts it behind the router too, at the same slot, to the same app port.
    old = copy.deepcopy(service)
    old["spec"]["ports"][2]["targetPort"] = "grpc"
    old["metadata"]["annotations"]["laneway.dev/target-ports"] = '{"80": 9000, "9001": 9001}'
    before = _merged(_merged(baseline, first), [old])
    assert render_sandbox(doc, before, KEY, mode="router") == first


def test_router_mode_errors_name_the_field() -> None:
    baseline = list(yaml.safe_load_all(MULTI_PORT))
    baseline[1]["spec"]["ports"][0]["targetPort"] = "missing"
    doc = {"kind": "Sandbox", "metadata": {"name": "sb-o", "namespace": "shop"},
           "spec": {"forks": [{"workload": {"name": "orders"}}]}}
    with pytest.raises(RenderError, match="targetPort 'missing' names no container port"):
        render_sandbox(doc, baseline, KEY, mode="router")
    doc["spec"]["forks"][0]["workload"]["namespace"] = "other"
    with pytest.raises(RenderError, match=r"spec.forks\[0\].workload.namespace"):
        render_sandbox(doc, baseline, KEY, mode="router")
    baseline = list(yaml.safe_load_all(MULTI_PORT))
    baseline[0]["spec"]["template"]["spec"]["containers"][0]["ports"].append(
        {"containerPort": 15080})
    doc["spec"]["forks"][0]["workload"].pop("namespace")
    with pytest.raises(RenderError, match="already listens on 15080"):
        render_sandbox(doc, baseline, KEY, mode="router")
    baseline = list(yaml.safe_load_all(MULTI_PORT))
    baseline[1]["spec"]["clusterIP"] = "None"
    with pytest.raises(RenderError, match="Service orders is headless"):
        render_sandbox(doc, baseline, KEY, mode="router")
    baseline[1]["spec"].pop("clusterIP")
    baseline[1]["spec"]["ports"] = [{"name": "tcp-db", "port": 5432},
                                    {"name": "https", "port": 8443}]
    with pytest.raises(RenderError, match=(
            r"Service orders has no HTTP, HTTP/2 or gRPC port, so router mode has nothing to "
            r"route \(port tcp-db: name 'tcp-db' is tcp, not HTTP; .*; port https: name "
            r"'https' is TLS; ")):
        render_sandbox(doc, baseline, KEY, mode="router")
    # Istio mode renders its routes whatever the ports (Envoy applies them to HTTP ones only).
    assert len(render_sandbox(doc, baseline, KEY, mode="istio")) == 3


def test_install_router_mode_adds_the_feed_service_and_token_reviews() -> None:
    from laneway.core.kubernetes.manifests import install_manifests

    objects = install_manifests(mode="router", image="registry.example/laneway:0.1.0")
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    feed = next(o for o in objects if o["kind"] == "Service")
    assert feed["metadata"]["name"] == "laneway-operator"
    assert feed["spec"]["ports"][0]["port"] == 8790
    role = next(o for o in objects if o["kind"] == "ClusterRole")
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
            "verbs": ["create"]} in role["rules"]
    env = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["env"]
    assert {"name": "LANEWAY_ROUTING_MODE", "value": "router"} in env


# gRPC and HTTP/2 ports (issue 12): Istio's port naming and appProtocol decide, in both modes.

GRPC = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: catalog, namespace: shop}
spec:
  selector: {matchLabels: {app: catalog}}
  template:
    metadata: {labels: {app: catalog}}
    spec:
      containers:
        - name: catalog
          image: registry.example/catalog:7
          ports: [{name: web, containerPort: 8080}, {name: rpc, containerPort: 50051}]
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec:
  selector: {app: catalog}
  ports:
    - {name: http, port: 80, targetPort: web}
    - {name: grpc, port: 9090, targetPort: rpc}
    - {name: grpc-api, port: 9091}
    - {name: grpc-web, port: 9092}
    - {name: http2-x, port: 9093}
    - {name: rpc, port: 9094, appProtocol: grpc}
    - {name: h2, port: 9095, appProtocol: kubernetes.io/h2c}
    - {name: tcp-db, port: 5432}
---
apiVersion: v1
kind: Service
metadata: {name: catalog-legacy, namespace: shop}
spec:
  selector: {app: catalog}
  ports: [{name: grpc, port: 8081, targetPort: web, appProtocol: http}]
"""
GRPC_SANDBOX = {"kind": "Sandbox", "metadata": {"name": "sb-g", "namespace": "shop"},
                "spec": {"forks": [{"workload": {"name": "catalog"},
                                    "image": "registry.example/catalog:pr-9"}]}}


@pytest.mark.parametrize(
    ("port", "protocol", "reason"),
    [
        ({"name": "http", "port": 80}, "http", ""),
        ({"name": "http-admin", "port": 81}, "http", ""),
        ({"port": 80}, "http", ""),  # unnamed: HTTP/1.1, the common case
        ({"name": "grpc", "port": 90}, "grpc", ""),
        ({"name": "GRPC-api", "port": 90}, "grpc", ""),
        ({"name": "grpc-web", "port": 90}, "grpc", ""),
        ({"name": "grpc-web-ui", "port": 90}, "grpc", ""),
        ({"name": "http2", "port": 90}, "h2c", ""),
        ({"name": "http2-x", "port": 90}, "h2c", ""),
        ({"name": "h2c-x", "port": 90}, "h2c", ""),
        ({"name": "web", "port": 90, "appProtocol": "grpc"}, "grpc", ""),
        ({"name": "web", "port": 90, "appProtocol": "kubernetes.io/h2c"}, "h2c", ""),
        ({"name": "web", "port": 90, "appProtocol": "kubernetes.io/ws"}, "http", ""),
        ({"name": "grpc", "port": 90, "appProtocol": "http"}, "http", ""),  # appProtocol wins
        ({"name": "http", "port": 90, "appProtocol": "grpc"}, "grpc", ""),
        ({"name": "tcp-db", "port": 5432}, None, "port tcp-db: name 'tcp-db' is tcp, not HTTP"),
        ({"name": "redis", "port": 6379}, None, "name 'redis' is redis, not HTTP"),
        ({"name": "mongo-main", "port": 27017}, None, "is mongo, not HTTP"),
        ({"name": "https", "port": 443}, None, "name 'https' is TLS"),
        ({"name": "tls-x", "port": 443}, None, "is TLS"),
        ({"name": "web", "port": 443, "appProtocol": "kubernetes.io/wss"}, None,
         "appProtocol 'kubernetes.io/wss' is TLS"),
        ({"name": "http", "port": 80, "appProtocol": "tcp"}, None, "appProtocol 'tcp' is tcp"),
        ({"name": "web", "port": 90}, None, "name 'web' names no protocol router mode routes"),
        ({"name": "dns", "port": 53, "protocol": "UDP"}, None, "UDP; the router proxies TCP"),
        ({"port": 3306}, None, "Istio takes 3306 for TCP (MySQL)"),
    ],
)
def test_router_protocol_follows_istio_port_naming(port: dict[str, Any], protocol: str | None,
                                                   reason: str) -> None:
    from laneway.core.kubernetes.router_mode import router_protocol

    got, why = router_protocol(port)
    assert got == protocol
    assert (reason in why) if reason else why == ""


@pytest.fixture(scope="module")
def rendered_grpc_router() -> dict[tuple[str, str], dict[str, Any]]:
    objects = render_sandbox(GRPC_SANDBOX, list(yaml.safe_load_all(GRPC)), KEY, mode="router")
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_router_mode_puts_grpc_and_h2c_ports_behind_the_sidecar(
    rendered_grpc_router: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for obj in rendered_grpc_router.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = rendered_grpc_router[("Deployment", "catalog")]["spec"]["template"]["spec"]
    router = pod["containers"][-1]
    assert router["name"] == "laneway-router"
    # Slots by position among both Services' ports: tcp-db keeps 15087 unused.
    assert listens(router["args"]) == [
        "catalog.shop:http=15080", "catalog.shop:grpc=15081/grpc",
        "catalog.shop:grpc-api=15082/grpc", "catalog.shop:grpc-web=15083/grpc",
        "catalog.shop:http2-x=15084/h2c", "catalog.shop:rpc=15085/grpc",
        "catalog.shop:h2=15086/h2c", "catalog-legacy.shop=15088"]
    baselines = [router["args"][i + 1] for i, a in enumerate(router["args"])
                 if a == "--baseline"]
    assert baselines[:2] == ["catalog.shop:http=127.0.0.1:8080",
                             "catalog.shop:grpc=127.0.0.1:50051"]  # named targetPorts resolved
    assert baselines[-1] == "catalog-legacy.shop=127.0.0.1:8080"
    assert [p["containerPort"] for p in router["ports"]] == [
        15080, 15081, 15082, 15083, 15084, 15085, 15086, 15088]
    service = rendered_grpc_router[("Service", "catalog")]
    assert [p.get("targetPort") for p in service["spec"]["ports"]] == [
        15080, 15081, 15082, 15083, 15084, 15085, 15086, None]  # tcp-db: straight to the app
    annotations = service["metadata"]["annotations"]
    assert yaml.safe_load(annotations["laneway.dev/target-ports"]) == {
        "80": 8080, "9090": 50051, "9091": 9091, "9092": 9092, "9093": 9093, "9094": 9094,
        "9095": 9095}
    unrouted = yaml.safe_load(annotations["laneway.dev/unrouted-ports"])
    assert list(unrouted) == ["5432"]
    assert "port tcp-db: name 'tcp-db' is tcp, not HTTP" in unrouted["5432"]
    legacy = rendered_grpc_router[("Service", "catalog-legacy")]
    assert legacy["spec"]["ports"][0]["targetPort"] == 15088

    from laneway.core.kubernetes.table import build_route_table

    injected = [o for o in rendered_grpc_router.values() if o["kind"] == "Service"]
    table = build_route_table([], [], injected)
    assert sorted(table.baseline) == sorted(
        entry.split("=")[0] for entry in listens(router["args"]))
    assert "catalog.shop:tcp-db" not in table.baseline


def test_router_mode_grpc_injection_is_idempotent(
    rendered_grpc_router: dict[tuple[str, str], dict[str, Any]],
) -> None:
    baseline = list(yaml.safe_load_all(GRPC))
    first = list(rendered_grpc_router.values())
    again = render_sandbox(GRPC_SANDBOX, _merged(baseline, first), KEY, mode="router")
    assert {(o["kind"], o["metadata"]["name"]): o for o in again} == rendered_grpc_router


def _istio_schema(kind: str, version: str) -> dict[str, Any]:
    crds = [d for d in yaml.safe_load_all(ISTIO.read_text()) if d]
    crd = next(d for d in crds if d["spec"]["names"]["kind"] == kind)
    return next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]
                if v["name"] == version and v["served"])


def test_istio_mode_routes_grpc_ports_like_http_ones() -> None:
    baseline = list(yaml.safe_load_all(GRPC))
    team_vs = yaml.safe_load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: catalog, namespace: shop}
spec:
  hosts: [catalog]
  http:
    - name: slow-method
      match: [{uri: {exact: /shop.Catalog/Search}, port: 9090}]
      timeout: 30s
      route: [{destination: {host: catalog, port: {number: 9090}}}]
    - name: default
      route: [{destination: {host: catalog}}]
""")
    rendered = render_sandbox(GRPC_SANDBOX, [*baseline, team_vs], KEY, mode="istio")
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered)
    assert kinds == [("Deployment", "catalog-lw-sb-g"), ("Service", "catalog-legacy-lw-sb-g"),
                     ("Service", "catalog-lw-sb-g"), ("VirtualService", "catalog"),
                     ("VirtualService", "laneway-catalog-legacy")]  # and no DestinationRule
    for obj in rendered:
        if obj["kind"] == "VirtualService":
            jsonschema.validate(obj, _istio_schema("VirtualService", "v1"))
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    by_name = {o["metadata"]["name"]: o for o in rendered}
    routes = by_name["catalog"]["spec"]["http"]
    assert [r["name"] for r in routes] == ["laneway-sb-g", "slow-method", "default"]
    mine = routes[0]
    # No port in the match or the destination: the route applies on every HTTP port of the
    # host (http, grpc, http2, ...) and keeps the port the call came in on.
    assert all(set(m) == {"headers"} for m in mine["match"])
    assert mine["route"] == [{"destination": {"host": "catalog-lw-sb-g.shop.svc.cluster.local"}}]
    baggage = mine["match"][0]["headers"]["baggage"]["regex"]
    re2.compile(baggage)
    # gRPC metadata are HTTP/2 headers: a client's baggage arrives as for HTTP.
    assert envoy_match(baggage, [f"laneway-key={KEY}"])
    assert envoy_match(baggage, ["tenant=acme", f"laneway-key={KEY};grpc=1"])
    assert not envoy_match(baggage, ["laneway-key=zzz000000000"])
    assert envoy_match(mine["match"][1]["headers"]["tracestate"]["regex"],
                       [f"laneway={KEY}"])
    # The fork Service keeps every port's name and appProtocol: Istio speaks HTTP/2 to the
    # fork's grpc/h2c ports as to the baseline's, with no DestinationRule.
    fork_ports = {p["name"]: p for p in by_name["catalog-lw-sb-g"]["spec"]["ports"]}
    assert fork_ports["grpc"]["targetPort"] == 50051
    assert fork_ports["grpc-api"]["port"] == 9091
    assert fork_ports["rpc"]["appProtocol"] == "grpc"
    assert fork_ports["h2"]["appProtocol"] == "kubernetes.io/h2c"
    legacy = by_name["laneway-catalog-legacy"]["spec"]["http"]
    assert [r["name"] for r in legacy] == ["laneway-sb-g", "laneway-default"]
