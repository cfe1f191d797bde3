"""The CLI as a user types it, against real processes: the whole story and its failure modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import httpx

from tests.e2e.conftest import LANEWAY, Project, alive, chain_yaml, free_ports, wait_all_dead


def versions(body: dict[str, Any]) -> list[str]:
    out = []
    while body:
        out.append(f"{body['service']}:{body['version']}")
        body = body["next"]
    return out


def get(project: Project, key: str | None = None, path: str = "/") -> httpx.Response:
    headers = {"baggage": f"trace=1, laneway-key={key};p=1"} if key else {}
    return httpx.get(project.url("a") + path, headers=headers, timeout=10)


def test_sandbox_story(project: Project) -> None:
    status = project.json("status")
    assert [s["phase"] for s in status["services"]] == ["ready"] * 3
    project.write("sb.yaml", "name: sb-b\nlabels: {team: pay}\nttl: 1h\nforks:\n"
                  "  - service: b\n    env: {VERSION: v2}\n")
    sandbox = project.json("sandbox", "apply", "-f", "sb.yaml", "--wait")
    key = sandbox["routingKey"]
    assert sandbox["status"]["ready"] is True
    assert sandbox["forks"] == [{"service": "b", "env": {"VERSION": "v2"}}]
    assert sandbox["labels"] == {"team": "pay"}

    assert versions(get(project).json()) == ["a:baseline", "b:baseline", "c:baseline"]
    keyed = get(project, key)
    assert versions(keyed.json()) == ["a:baseline", "b:v2", "c:baseline"]
    assert keyed.headers["laneway-served-by"] == "a"

    # Re-applying the same file changes nothing; a change keeps the key and replaces the fork.
    again = project.json("sandbox", "apply", "-f", "sb.yaml", "--wait")
    assert again["generation"] == 1
    assert again["status"]["forks"][0]["pid"] == sandbox["status"]["forks"][0]["pid"]
    project.write("sb.yaml", "name: sb-b\nforks:\n  - service: b\n    env: {VERSION: v3}\n"
                  "  - service: c\n    env: {VERSION: v3}\n")
    updated = project.json("sandbox", "apply", "-f", "sb.yaml", "--wait")
    assert updated["routingKey"] == key
    assert versions(get(project, key).json()) == ["a:baseline", "b:v3", "c:v3"]

    hops = project.json("hops", "--sandbox", "sb-b")
    assert {(h["service"], h["destination"]) for h in hops} >= {("b", "sb-b"), ("c", "sb-b"),
                                                                ("a", "baseline")}
    logs = project.run("sandbox", "logs", "sb-b", "--service", "b").stdout
    assert "b v3 listening" in logs
    listed = project.run("sandbox", "list").stdout
    assert "sb-b" in listed
    assert key in listed

    project.remember_pids()
    project.run("sandbox", "delete", "sb-b")
    assert versions(get(project, key).json()) == ["a:baseline", "b:baseline", "c:baseline"]
    assert project.json("sandbox", "list") == []


def test_route_group_and_conflict(project: Project) -> None:
    for name, service in (("one", "b"), ("two", "c"), ("three", "c")):
        project.write(f"{name}.yaml", f"name: {name}\nlabels: {{feature: f-{name}}}\n"
                      f"forks:\n  - service: {service}\n    env: {{VERSION: {name}}}\n")
        project.run("sandbox", "apply", "-f", f"{name}.yaml", "--wait")
    project.write("g.yaml", "name: feature\nmatch:\n  labels: {feature: 'f-*'}\n")
    group = project.json("routegroup", "apply", "-f", "g.yaml")
    assert group["status"]["conflicts"] == [{"service": "c", "sandboxes": ["three", "two"]}]
    at_c = httpx.get(project.url("c"), headers={"baggage": f"laneway-key={group['routingKey']}"})
    assert at_c.status_code == 503
    assert "forked by three, two" in at_c.json()["message"]

    project.write("g.yaml", "name: feature\nmatch:\n  labels: {feature: 'f-[ot][nw]*'}\n")
    group = project.json("routegroup", "apply", "-f", "g.yaml")
    assert group["status"]["sandboxes"] == ["one", "two"]
    assert group["status"]["conflicts"] == []
    assert versions(get(project, group["routingKey"]).json()) == ["a:baseline", "b:one",
                                                                  "c:two"]
    project.run("sandbox", "delete", "two")
    group = project.json("routegroup", "get", "feature")
    assert group["status"]["sandboxes"] == ["one"]
    assert versions(get(project, group["routingKey"]).json()) == ["a:baseline", "b:one",
                                                                  "c:baseline"]
    project.run("routegroup", "delete", "feature")
    assert versions(get(project, group["routingKey"]).json())[1] == "b:baseline"


def test_bad_sandbox_input_is_a_clear_error(project: Project) -> None:
    project.write("bad.yaml", "name: x\nforks: [service: b\n")
    result = project.run("sandbox", "apply", "-f", "bad.yaml", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ")
    assert "bad.yaml: invalid YAML: line" in result.stderr
    assert "Traceback" not in result.stderr

    project.write("bad.yaml", "name: x\nforks:\n  - service: nope\n")
    result = project.run("sandbox", "apply", "-f", "bad.yaml", check=False)
    assert "bad.yaml: forks[0].service: unknown service 'nope'; the baseline has: a, b, c" \
        in result.stderr

    project.write("bad.yaml", "name: x\nforks:\n  - service: b\n  - service: b\n")
    result = project.run("sandbox", "apply", "-f", "bad.yaml", check=False)
    assert "forks[1].service" in result.stderr

    result = project.run("sandbox", "get", "missing", check=False)
    assert result.returncode == 1
    assert "sandbox 'missing' not found" in result.stderr
    assert project.json("sandbox", "list") == []


def test_broken_forks_are_reported_and_disturb_nothing(project: Project) -> None:
    project.write("good.yaml", "name: good\nforks:\n  - service: c\n    env: {VERSION: ok}\n")
    good = project.json("sandbox", "apply", "-f", "good.yaml", "--wait")

    project.write("exits.yaml", "name: exits\nforks:\n  - service: b\n"
                  "    env: {EXIT_AT_ONCE: '1'}\n")
    result = project.run("sandbox", "apply", "-f", "exits.yaml", "--wait", check=False)
    assert result.returncode == 1
    assert "exited with code 3" in result.stderr
    assert "cannot load configuration" in result.stderr
    key = project.json("sandbox", "get", "exits")["routingKey"]
    direct = httpx.get(project.url("b"), headers={"baggage": f"laneway-key={key}"})
    assert direct.status_code == 503
    assert direct.json()["sandbox"] == "exits"
    assert "exited with code 3" in direct.json()["message"]

    project.write("sick.yaml", "name: sick\nforks:\n  - service: b\n"
                  "    env: {FAIL_HEALTH: '1'}\n")
    result = project.run("sandbox", "apply", "-f", "sick.yaml", "--wait", check=False)
    assert result.returncode == 1
    assert "not healthy after 3s" in result.stderr

    # Baseline and the good sandbox are untouched.
    assert versions(get(project).json()) == ["a:baseline", "b:baseline", "c:baseline"]
    assert versions(get(project, good["routingKey"]).json())[-1] == "c:ok"
    assert all(s["phase"] == "ready" for s in project.json("status")["services"])


def test_bad_project_and_taken_port(tmp_path: Any) -> None:
    ports = dict(zip("abc", free_ports(3), strict=True))
    proj = Project(tmp_path, ports)
    proj.write("laneway.yaml", "name: x\nservices:\n  a: {run: x, port: 99999}\n")
    result = proj.run("up", "--detach", check=False)
    assert result.returncode == 2
    assert "laneway.yaml: services.a.port: Input should be less than or equal to 65535" \
        in result.stderr

    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", ports["b"]))
    holder.listen()
    try:
        proj.write("laneway.yaml", chain_yaml(ports))
        result = proj.run("up", "--detach", check=False)
        assert result.returncode == 1
        assert f"port {ports['b']} of service 'b' is already in use" in result.stderr
        assert not (tmp_path / ".laneway" / "api.json").exists()
        assert list((tmp_path / ".laneway" / "run").glob("*.json")) == []
    finally:
        holder.close()


def test_baseline_that_crashes_fails_up_with_its_log(tmp_path: Any) -> None:
    ports = dict(zip("abc", free_ports(3), strict=True))
    proj = Project(tmp_path, ports)
    proj.write("laneway.yaml", chain_yaml(ports).replace(
        "    env:\n      NEXT_URL: ${services.c.url}",
        "    env:\n      EXIT_AT_ONCE: '1'\n      NEXT_URL: ${services.c.url}"))
    result = proj.run("up", "--detach", check=False)
    assert result.returncode == 1
    assert "baseline service b crashed" in result.stderr
    assert "cannot load configuration" in result.stderr
    assert not (tmp_path / ".laneway" / "api.json").exists()


def test_foreground_ctrl_c_means_down(tmp_path: Any) -> None:
    ports = dict(zip("abc", free_ports(3), strict=True))
    proj = Project(tmp_path, ports)
    proj.write("laneway.yaml", chain_yaml(ports))
    with subprocess.Popen([LANEWAY, "up"], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as daemon:
        try:
            deadline = time.monotonic() + 30
            lines = []
            assert daemon.stdout is not None
            while time.monotonic() < deadline:
                line = daemon.stdout.readline()
                lines.append(line)
                if "baseline ready" in line:
                    break
            assert any("baseline ready" in ln for ln in lines), lines
            proj.remember_pids()
            assert versions(get(proj).json()) == ["a:baseline", "b:baseline", "c:baseline"]
            daemon.send_signal(signal.SIGINT)
            assert daemon.wait(timeout=20) == 0
            assert "laneway: stopped" in daemon.stdout.read()
            wait_all_dead(proj.pids)
        finally:
            if daemon.poll() is None:
                daemon.kill()


def test_a_killed_daemon_leaves_traffic_served_and_the_next_up_adopts_it(
        project: Project) -> None:
    project.write("sb.yaml", "name: s\nforks:\n  - service: b\n    env: {VERSION: v2}\n")
    key = project.json("sandbox", "apply", "-f", "sb.yaml", "--wait")["routingKey"]
    before = {s["name"]: s["pid"] for s in project.json("status")["services"]}
    daemon = json.loads((project.root / ".laneway" / "api.json").read_text())["pid"]
    os.kill(daemon, signal.SIGKILL)
    wait_all_dead({daemon})
    # The data plane outlives the control plane: both the baseline and the fork still answer.
    plain = httpx.get(project.url("a") + "/", timeout=5)
    keyed = httpx.get(project.url("a") + "/", headers={"baggage": f"laneway-key={key}"},
                      timeout=5)
    assert plain.json()["next"]["version"] == "baseline"
    assert keyed.json()["next"]["version"] == "v2"
    project.run("up", "--detach")
    # Adopted, not restarted: the same processes serve, the sandbox keeps its key.
    after = {s["name"]: s["pid"] for s in project.json("status")["services"]}
    assert after == before
    sandbox = project.json("sandbox", "get", "s")
    assert sandbox["routingKey"] == key
    assert sandbox["status"]["ready"]
    assert not alive(daemon)


def test_api_flag_with_token_works_from_anywhere(project: Project, tmp_path_factory: Any) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    api = json.loads((project.root / ".laneway" / "api.json").read_text())["url"]
    token = (project.root / ".laneway" / "token").read_text()
    assert oct((project.root / ".laneway" / "token").stat().st_mode & 0o777) == "0o600"
    base = [LANEWAY, "status", "-o", "json", "--api", api]
    lost = subprocess.run([LANEWAY, "status"], cwd=elsewhere, capture_output=True, text=True,
                          check=False)
    assert lost.returncode == 1
    assert "no laneway environment here" in lost.stderr
    no_token = subprocess.run(base, cwd=elsewhere, capture_output=True, text=True, check=False,
                              env={"PATH": "/usr/bin:/bin"})
    assert "LANEWAY_TOKEN" in no_token.stderr
    wrong = subprocess.run(base, cwd=elsewhere, capture_output=True, text=True, check=False,
                           env={"PATH": "/usr/bin:/bin", "LANEWAY_TOKEN": "wrong"})
    assert wrong.returncode == 1
    assert "wrong API token" in wrong.stderr
    ok = subprocess.run(base, cwd=elsewhere, capture_output=True, text=True, check=True,
                        env={"PATH": "/usr/bin:/bin", "LANEWAY_TOKEN": token})
    assert json.loads(ok.stdout)["name"] == "chain"


def test_usage_mistakes_are_one_error_without_a_traceback(tmp_path: Any) -> None:
    for args in (["nosuch"], ["sandbox", "apply"], ["sandbox", "apply", "-f", "x", "--bogus"],
                 ["status", "--output", "yaml"], ["trace"]):
        result = subprocess.run([LANEWAY, *args], cwd=tmp_path, capture_output=True,
                                text=True, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert "Error:" in result.stderr, args
        assert "Traceback" not in result.stderr + result.stdout, (args, result.stderr)


def test_down_stops_everything_after_the_daemon_crashed_or_stalled(tmp_path: Any) -> None:
    from laneway.core.processes import find_marked

    for fault in (signal.SIGKILL, signal.SIGSTOP):
        root = tmp_path / fault.name
        root.mkdir()
        proj = Project(root, dict(zip("abc", free_ports(3), strict=True)))
        proj.write("laneway.yaml", chain_yaml(proj.ports))
        proj.run("up", "--detach")
        proj.write("sb.yaml", "name: s\nforks:\n  - service: b\n")
        proj.run("sandbox", "apply", "-f", "sb.yaml", "--wait")
        state = root / ".laneway"
        marked = find_marked(state)
        daemon = json.loads((state / "api.json").read_text())["pid"]
        assert daemon in marked
        assert len(marked) >= 6  # daemon, data plane, three services, the fork
        os.kill(daemon, fault)
        down = proj.run("down", timeout=90)
        assert "stopped" in down.stdout
        wait_all_dead(set(marked))
        assert find_marked(state) == []
