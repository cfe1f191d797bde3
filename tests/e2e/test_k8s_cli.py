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
    kinds = [d["kind"] for d in yaml.safe_load_all(installed.stdout) if d]
    assert kinds[-1] == "Service"  # the routes feed the sidecars follow
