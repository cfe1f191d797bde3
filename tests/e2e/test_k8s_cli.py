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
