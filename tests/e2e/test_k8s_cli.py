"""`laneway k8s render` as a user types it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.e2e.conftest import LANEWAY

DATA = Path(__file__).parents[1] / "data" / "k8s"


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LANEWAY, "k8s", "render", "-f", str(DATA / "sandbox.yaml"), *args],
                          capture_output=True, text=True, check=False, timeout=60)


def test_render_prints_every_object_and_keeps_a_given_key() -> None:
    result = render("--baseline", str(DATA), "--routing-key", "abc123def456")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [d["kind"] for d in docs].count("Deployment") == 2
    assert "abc123def456" in result.stdout.splitlines()[0]


def test_render_generates_a_key_and_reports_bad_input(tmp_path: Path) -> None:
    result = render("--baseline", str(DATA))
    assert result.returncode == 0
    assert "routing key:" in result.stderr
    assert "(generated)" in result.stderr
    bad = render("--baseline", str(DATA), "--routing-key", "NOPE")
    assert bad.returncode == 1
    assert "--routing-key: must be 12 characters" in bad.stderr
    empty = render("--baseline", str(tmp_path))
    assert "no .yaml files there" in empty.stderr
    assert "Traceback" not in empty.stderr + bad.stderr


def test_render_router_mode_and_install_print() -> None:
    result = render("--baseline", str(DATA), "--routing-key", "abc123def456", "--mode",
                    "router", "--image", "registry.example/laneway:0.1.0",
                    "--operator-namespace", "lw")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert "VirtualService" not in [d["kind"] for d in docs]
    pricing = next(d for d in docs if d["kind"] == "Deployment"
                   and d["metadata"]["name"] == "pricing")
    router = pricing["spec"]["template"]["spec"]["containers"][-1]
    assert router["image"] == "registry.example/laneway:0.1.0"
    assert "http://laneway-operator.lw.svc:8790/v1/routes" in router["args"]
    bad = render("--baseline", str(DATA), "--mode", "linkerd")
    assert bad.returncode == 1
    assert "--mode linkerd: must be istio or router" in bad.stderr
    installed = subprocess.run([LANEWAY, "k8s", "install", "--print", "--mode", "router"],
                               capture_output=True, text=True, check=True, timeout=60)
    docs = [d for d in yaml.safe_load_all(installed.stdout) if d]
    # The operator's Service: its API, and the routes feed the sidecars follow.
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["metadata"]["name"] == "laneway-operator"
    assert service["spec"]["ports"][0]["port"] == 8790
    operator = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    assert env["LANEWAY_ROUTING_MODE"] == "router"


PLAIN = """
name: sb-a
namespace: shop
labels: {team: pay}
ttl: 2h
forks:
  - workload: pricing
    image: registry.example/pricing:pr-123
    env: {DISCOUNT: "20"}
  - workload: {name: currency}
    env: [{name: RATES, value: fixed}]
"""


def test_render_and_convert_read_the_plain_sandbox_file_users_have(tmp_path: Path) -> None:
    plain = tmp_path / "sandbox.yaml"
    plain.write_text(PLAIN)
    args = ["--baseline", str(DATA), "--routing-key", "abc123def456"]
    from_plain = subprocess.run([LANEWAY, "k8s", "render", "-f", str(plain), *args],
                                capture_output=True, text=True, check=False, timeout=60)
    assert from_plain.returncode == 0, from_plain.stderr
    assert from_plain.stdout == render(*args).stdout  # the same objects as the resource's
    converted = subprocess.run([LANEWAY, "k8s", "convert", "-f", str(plain)],
                               capture_output=True, text=True, check=True, timeout=60)
    (resource,) = [d for d in yaml.safe_load_all(converted.stdout) if d]
    assert resource["apiVersion"] == "laneway.dev/v1alpha1"
    assert resource["kind"] == "Sandbox"
    assert resource["metadata"] == {"name": "sb-a", "namespace": "shop"}
    assert resource["spec"]["forks"][1] == {"workload": {"kind": "Deployment",
                                                         "name": "currency"},
                                            "env": [{"name": "RATES", "value": "fixed"}]}
    # Converted back through render: the same objects again.
    again = tmp_path / "resource.yaml"
    again.write_text(converted.stdout)
    rendered = subprocess.run([LANEWAY, "k8s", "render", "-f", str(again), *args],
                              capture_output=True, text=True, check=True, timeout=60)
    assert rendered.stdout == from_plain.stdout
    # A local fork's field is refused with why; no traceback.
    plain.write_text("name: dev\nforks:\n  - workload: pricing\n    address: 127.0.0.1:9000\n")
    refused = subprocess.run([LANEWAY, "k8s", "convert", "-f", str(plain)],
                             capture_output=True, text=True, check=False, timeout=60)
    assert refused.returncode == 1
    assert "forks[0].address: only for forks on this machine" in refused.stderr
    assert "Traceback" not in refused.stderr
