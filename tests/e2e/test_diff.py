"""Capture and diff as a user runs them (issue 13, items 3-4): real traffic to the chain's entry
service captured by its router (`router.capture_services`), listed and exported with credentials
hashed, then replayed by `laneway diff` against a sandbox whose fork renames a field."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    loose = captured.run("diff", "--sandbox", "sb", "--relative", "1.5", check=False)
    assert loose.returncode != 0
    assert "--relative" in loose.stderr
    assert "Traceback" not in loose.stderr


def _captures(project: Project, *args: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for _ in range(50):  # hop records (and their captures) arrive in batches
        found = project.json("captures", *args)
        if len(found) >= count:
            break
    return found


def test_a_sandbox_with_capture_and_a_run_with_capture_are_captured_at_every_service(
        project: Project) -> None:
    """No service is captured by laneway.yaml here: the sandbox's `capture: true` and the
    run's `--capture` capture their keys' requests at every hop, baseline fallbacks too."""
    project.write("renamed.yaml", "name: renamed\ncapture: true\nforks:\n  - service: b\n"
                                  "    env: {RENAME: ver}\n")
    project.run("sandbox", "apply", "-f", "renamed.yaml", "--wait")
    view = project.json("sandbox", "get", "renamed")
    assert view["capture"] is True
    key = view["routingKey"]
    assert "capture: on" in project.run("sandbox", "get", "renamed").stdout
    with httpx.Client(trust_env=False) as client:
        client.get(project.url("a") + "/", headers={"baggage": f"laneway-key={key}"})
        client.get(project.url("a") + "/")  # the baseline's: not captured
    found = _captures(project, "--sandbox", "renamed", count=3)
    assert sorted((c["service"], c["destination"]) for c in found) == [
        ("a", "baseline"), ("b", "renamed"), ("c", "baseline")]
    assert len(project.json("captures")) == 3
    entry = next(c for c in found if c["service"] == "a")
    assert project.json("captures", "--id", entry["id"])[0]["id"] == entry["id"]

    one = project.run("diff", "--sandbox", "renamed", "--capture", entry["id"], "-o", "json",
                      "--relative", "0.5", check=False)
    assert one.returncode == 1, one.stderr
    report = json.loads(one.stdout)
    assert report["thresholds"] == {"relative": 0.5, "absolute": 0.0003}
    assert report["replayed"] == 1
    assert [(f["risk"], f["endpoint"], f["path"]) for f in report["findings"]] == [
        ("red", "a: GET /", "$.next.version")]
    example = report["findings"][0]["example"]
    assert json.loads(example["baseline"]["body"])["next"]["version"] == "baseline"
    assert "ver" in json.loads(example["sandbox"]["body"])["next"]
    gone = project.run("diff", "--sandbox", "renamed", "--capture", "c0000000000", check=False)
    assert gone.returncode != 0
    assert "capture 'c0000000000' not found" in gone.stderr
    assert "Traceback" not in gone.stderr

    # A run with --capture against a sandbox without `capture`: its requests, while it runs.
    project.write("plain.yaml", "name: plain\nforks:\n  - service: c\n"
                                "    env: {VERSION: v2}\n")
    project.run("sandbox", "apply", "-f", "plain.yaml", "--wait")
    script = ("import os, urllib.request; "
              "urllib.request.urlopen(os.environ['LANEWAY_URL_A'] + '/').read()")
    ran = project.run("run", "--sandbox", "plain", "--capture", "-o", "json", "--",
                      sys.executable, "-c", script)
    run_report = json.loads(ran.stdout)
    assert run_report["verdict"] == "passed"
    assert run_report["captured"] == 3
    by_run = _captures(project, "--run", run_report["id"], count=3)
    assert sorted((c["service"], c["destination"]) for c in by_run) == [
        ("a", "baseline"), ("b", "baseline"), ("c", "plain")]
    replay = project.json("diff", "--sandbox", "plain", "--capture", run_report["id"])
    assert replay["replayed"] == 3
    assert {(f["risk"], f["endpoint"], f["path"]) for f in replay["findings"]} == {
        ("yellow", "a: GET /", "$.next.next.version"), ("yellow", "b: GET /", "$.next.version"),
        ("yellow", "c: GET /", "$.version")}
    # Once the run is over its key is no longer captured.
    before = len(project.json("hops", "--sandbox", "plain", "--limit", "1000"))
    with httpx.Client(trust_env=False) as client:
        client.get(project.url("a") + "/",
                   headers={"baggage": f"laneway-key={run_report['routing_key']}"})
    for _ in range(50):  # its hops arrive, uncaptured
        if len(project.json("hops", "--sandbox", "plain", "--limit", "1000")) >= before + 3:
            break
    assert len(project.json("hops", "--sandbox", "plain", "--limit", "1000")) == before + 3
    assert len(project.json("captures", "--sandbox", "plain")) == 3


def test_credentials_stored_hashed_are_given_back_with_header(tmp_path: Path) -> None:
    ports = dict(zip("abc", free_ports(3), strict=True))
    proj = Project(tmp_path, ports)
    text = chain_yaml(ports, "router:\n  capture_services: [a]\n").replace(
        "      NEXT_URL: ${services.b.url}\n",
        "      NEXT_URL: ${services.b.url}\n      REQUIRE_AUTH: tok\n")
    proj.write("laneway.yaml", text)
    with proj.running():
        with httpx.Client(trust_env=False) as client:
            assert client.get(proj.url("a") + "/",
                              headers={"authorization": "Bearer tok"}).status_code == 200
        assert len(_captures(proj, count=1)) == 1
        proj.write("renamed.yaml", "name: renamed\nforks:\n  - service: b\n"
                                   "    env: {RENAME: ver}\n")
        proj.run("sandbox", "apply", "-f", "renamed.yaml", "--wait")
        blind = proj.run("diff", "--sandbox", "renamed", "-o", "json", check=False)
        report = json.loads(blind.stdout)
        assert report["findings"] == []  # 401 from the baseline and the sandbox alike
        assert "authorization" in report["note"]
        assert "--header" in report["note"]
        told = proj.run("diff", "--sandbox", "renamed", "-H", "Authorization: Bearer tok",
                        "-o", "json", check=False)
        assert told.returncode == 1
        report = json.loads(told.stdout)
        assert [(f["risk"], f["path"]) for f in report["findings"]] == [
            ("red", "$.next.version")]
        assert "note" not in report
        bad = proj.run("diff", "--sandbox", "renamed", "-H", "no colon", check=False)
        assert bad.returncode != 0
        assert "headers[0]" in bad.stderr
        assert "Traceback" not in bad.stderr
