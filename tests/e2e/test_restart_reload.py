"""`laneway restart SERVICE` and `laneway reload`, through the CLI, with traffic flowing: a
baseline process is replaced make-before-break (no request fails), an edited laneway.yaml is
applied (changed services replaced, new ones started, removed ones stopped once the sandboxes
that fork them are told), and a mistake in it changes nothing."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.e2e.conftest import CHAIN, Project, chain_yaml, free_ports, wait_all_dead
from tests.e2e.test_churn import wait_until


class Traffic:
    """Requests through a's public port, one after another, until stopped: every answer's
    status (or the error; a's call to b that failed counts as b's error, though a answers
    200) and the version b answered with."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter[str] = Counter()
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    resp = client.get(self.url + "/")
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                    continue
                nxt = resp.json().get("next") or {} if resp.status_code == 200 else {}
                if "version" in nxt:
                    self.statuses["200"] += 1
                    self.versions.append(nxt["version"])
                else:
                    self.statuses[f"{resp.status_code} {nxt.get('error', '')}"] += 1

    @contextmanager
    def flowing(self) -> Iterator[Traffic]:
        self._thread.start()
        wait_until("traffic flows", lambda: self.statuses["200"] >= 5, 10)
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(15)


def service(project: Project, name: str) -> dict[str, Any]:
    return next(s for s in project.json("status")["services"] if s["name"] == name)


def test_restart_replaces_a_service_make_before_break_and_no_request_fails(
        project: Project) -> None:
    before = service(project, "b")
    traffic = Traffic(project.url("a"))
    with traffic.flowing():
        done = project.run("restart", "b")
        served_during = sum(traffic.statuses.values())
        wait_until("traffic after the restart", lambda: sum(traffic.statuses.values()) >
                   served_during + 5, 10)
    assert "b: restarted" in done.stdout
    after = service(project, "b")
    project.pids.add(after["pid"])
    assert after["pid"] != before["pid"]
    assert after["unit"] == "b~1"
    assert after["ready"]
    assert after["replacing"] is None
    wait_all_dead({before["pid"]})
    # Every request made while the old process was replaced was answered, by one or the other.
    assert set(traffic.statuses) == {"200"}, traffic.statuses
    # Both processes log to the service's one log; the new one says it started.
    log = project.run("logs", "b", "--grep", "laneway: starting").stdout
    assert log.count("laneway: starting") >= 2
    audit = project.json("status")  # the environment is intact
    assert audit["ready"]

    # An unknown service is a clear error, and nothing is restarted.
    wrong = project.run("restart", "nope", check=False)
    assert wrong.returncode == 1
    assert "service 'nope' not found" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert service(project, "b")["pid"] == after["pid"]


def test_a_replacement_whose_new_process_fails_leaves_the_old_one_serving(
        project: Project) -> None:
    before = service(project, "c")
    # The next process of c cannot start: its program is gone (a broken build, say).
    chain = project.root / "c.py"
    chain.write_text("import sys; sys.exit('c: broken build')\n")
    broken = chain_yaml(project.ports).replace(
        f"run: [{sys.executable}, {CHAIN}]\n    port: {project.ports['c']}",
        f"run: [{sys.executable}, {chain}]\n    port: {project.ports['c']}", 1)
    assert broken != chain_yaml(project.ports)
    project.write("laneway.yaml", broken)
    failed = project.run("reload", "--timeout", "20", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "the new process failed" in failed.stderr
    assert "c: broken build" in failed.stderr
    # The new process is retried with backoff; between two attempts it is "starting" again,
    # and the replacement must read as failed at every moment, not only while it is down.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        now = next(s for s in project.api("/v1/status")["services"] if s["name"] == "c")
        assert now["pid"] == before["pid"]
        assert now["ready"]
        assert now["replacing"]["failed"], now["replacing"]
        assert "replacement failed" in now["message"]
        assert "keeps serving" in now["message"]
        time.sleep(0.005)
    assert httpx.get(project.url("c") + "/", timeout=5).status_code == 200
    # Fixed: the failed replacement goes, the old process is replaced by a good new one.
    project.write("laneway.yaml", chain_yaml(project.ports))
    project.run("reload")
    fixed = service(project, "c")
    project.pids.add(fixed["pid"])
    assert fixed["ready"]
    assert fixed["replacing"] is None


def test_reload_applies_an_edited_laneway_yaml_while_traffic_flows(project: Project) -> None:
    base = chain_yaml(project.ports)
    (d_port,) = free_ports(1)
    b_pid = service(project, "b")["pid"]
    c_pid = service(project, "c")["pid"]
    assert project.run("reload").stdout.strip() == "laneway.yaml: nothing changed"

    # A mistake changes nothing and names the field.
    project.write("laneway.yaml", base.replace("health: /healthz\n    startup_timeout: 3s\n"
                                               "    env:", "helth: /healthz\n    env:", 1))
    wrong = project.run("reload", check=False)
    assert wrong.returncode == 1
    assert "Traceback" not in wrong.stderr
    assert "services.b.helth" in wrong.stderr
    assert "did you mean 'health'" in wrong.stderr
    assert service(project, "b")["pid"] == b_pid

    # b changes (a new env value) and d is new; c is unchanged.
    edited = base.replace("      NEXT_URL: ${services.c.url}\n",
                          "      NEXT_URL: ${services.c.url}\n      VERSION: v2\n", 1) + f"""
  d:
    run: [{sys.executable}, {CHAIN}]
    port: {d_port}
    health: /healthz
"""
    project.write("laneway.yaml", edited)
    project.ports["d"] = d_port
    dry = project.run("reload", "--dry-run").stdout
    assert "dry run, nothing changed" in dry
    assert "changed    b (env)" in dry
    assert service(project, "b")["pid"] == b_pid
    traffic = Traffic(project.url("a"))
    with traffic.flowing():
        out = project.run("reload").stdout
        wait_until("b answers v2", lambda: traffic.versions[-1:] == ["v2"], 10)
    assert "changed    b (env)" in out
    assert "added      d" in out
    assert "unchanged  c, a\n" in out
    assert set(traffic.statuses) == {"200"}, traffic.statuses
    # Old answers, then new ones: never a mix after the switch.
    first_new = traffic.versions.index("v2")
    assert set(traffic.versions[first_new:]) == {"v2"}
    assert service(project, "c")["pid"] == c_pid
    new_b = service(project, "b")
    project.pids.update({new_b["pid"], service(project, "d")["pid"]})
    assert new_b["pid"] != b_pid
    wait_all_dead({b_pid})
    assert httpx.get(project.url("d") + "/", timeout=5).json()["service"] == "d"

    # d is removed while a sandbox forks it: the sandbox is told (failed, with why), d stops.
    project.write("sb.yaml", "name: uses-d\nforks:\n  - service: d\n")
    project.run("sandbox", "apply", "-f", "sb.yaml", "--wait")
    d_pid = service(project, "d")["pid"]
    fork_pid = project.json("sandbox", "get", "uses-d")["status"]["forks"][0]["pid"]
    project.write("laneway.yaml", edited.split("\n  d:\n")[0] + "\n")
    out = project.run("reload").stdout
    assert "removed    d" in out
    assert "sandbox uses-d is now failed" in out
    status = project.json("sandbox", "get", "uses-d")["status"]
    assert status["phase"] == "failed"
    assert "'d', no longer a service of laneway.yaml" in status["message"]
    wait_all_dead({d_pid, fork_pid})
    try:
        httpx.get(project.url("d") + "/", timeout=5)
        raise AssertionError("d's public port still answers")
    except httpx.ConnectError:
        pass
    assert [s["name"] for s in project.json("status")["services"]] == ["c", "b", "a"]
