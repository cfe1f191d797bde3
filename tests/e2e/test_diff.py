"""Capture and diff as a user runs them (issue 13, items 3-4): real traffic to the chain's entry
service captured by its router (`router.capture_services`), listed and exported with credentials
hashed, then replayed by `laneway diff` against a sandbox whose fork renames a field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Project, chain_yaml, free_ports


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[Project]:
    ports = dict(zip("abc", free_ports(3), strict=True))
    proj = Project(tmp_path, ports)
    proj.write("laneway.yaml", chain_yaml(ports, "router:\n  capture_services: [a]\n"))
    with proj.running():
        yield proj


def test_captured_traffic_is_listed_and_diffed_against_a_sandbox(captured: Project) -> None:
    with httpx.Client(trust_env=False) as client:
        for _ in range(4):
            assert client.get(captured.url("a") + "/").status_code == 200
        client.get(captured.url("a") + "/", headers={"authorization": "Bearer s3cret"})
    found = []
    for _ in range(50):  # hop records (and their captures) arrive in batches
        found = captured.json("captures")
        if len(found) >= 5:
            break
    assert len(found) == 5
    assert {(c["service"], c["request"]["target"], c["response"]["status"]) for c in found} == \
        {("a", "/", 200)}
    assert json.loads(found[0]["response"]["body"])["service"] == "a"
    auth = [v for c in found for n, v in c["request"]["headers"] if n == "authorization"]
    assert len(auth) == 1
    assert auth[0].startswith("redacted:")
    assert "s3cret" not in auth[0]
    exported = captured.run("captures", "-o", "jsonl").stdout.splitlines()
    assert len(exported) == 5

    captured.write("renamed.yaml", "name: renamed\nforks:\n  - service: b\n"
                                   "    env: {RENAME: ver}\n")
    captured.run("sandbox", "apply", "-f", "renamed.yaml", "--wait")
    result = captured.run("diff", "--sandbox", "renamed", "-o", "json", check=False)
    assert result.returncode == 1  # red findings fail the command, for CI
    report = json.loads(result.stdout)
    assert [(f["risk"], f["endpoint"], f["path"]) for f in report["findings"]] == [
        ("red", "a: GET /", "$.next.version")]
    assert report["replayed"] == 5
    table = captured.run("diff", "--sandbox", "renamed", check=False).stdout
    assert "$.next.version" in table


def test_diff_errors_say_what_to_do(captured: Project) -> None:
    missing = captured.run("diff", "--sandbox", "nope", check=False)
    assert missing.returncode != 0
    assert "sandbox 'nope' not found" in missing.stderr
    captured.write("sb.yaml", "name: sb\nforks:\n  - service: b\n")
    captured.run("sandbox", "apply", "-f", "sb.yaml", "--wait")
    nothing = captured.run("diff", "--sandbox", "sb", "--service", "c", check=False)
    assert nothing.returncode != 0
    assert "router.capture_services" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    bad = captured.run("diff", "--sandbox", "sb", "--since", "ten", check=False)
    assert "--since" in bad.stderr
