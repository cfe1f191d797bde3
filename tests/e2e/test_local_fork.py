"""Your own process as the fork: a fork at an address (run by hand, under a debugger),
`laneway sandbox env` to start it with exactly the env laneway would give it, and `laneway
sandbox exec` to run a command as the fork while it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.conftest import CHAIN, LANEWAY, Project, free_ports
from tests.e2e.test_churn import wait_until


def versions(body: dict[str, Any]) -> list[str]:
    out = []
    while body:
        out.append(f"{body['service']}:{body.get('version', body.get('error'))}")
        body = body.get("next")
    return out


def get(project: Project, key: str) -> httpx.Response:
    return httpx.get(project.url("a") + "/", headers={"baggage": f"laneway-key={key}"},
                     timeout=10)


def eventually(check: Callable[[], Any], timeout: float = 15) -> Any:
    return wait_until("the sandbox routes as expected", check, timeout, every=0.1)


def test_a_fork_at_an_address_is_watched_routed_and_reported_down(project: Project) -> None:
    port = free_ports(1)[0]
    project.write("sb.yaml", f"name: dev\nforks:\n  - service: b\n"
                             f"    address: localhost:{port}\n    env: {{VERSION: by-hand}}\n")
    # `--wait` does not wait for a process nobody has started: it says so at once.
    applied = project.run("sandbox", "apply", "-f", "sb.yaml", "--wait", "--timeout", "60",
                          timeout=50)
    assert f"nothing healthy at 127.0.0.1:{port}" in applied.stdout
    view = project.json("sandbox", "get", "dev")
    key = view["routingKey"]
    assert view["forks"] == [{"service": "b", "env": {"VERSION": "by-hand"},
                              "address": f"127.0.0.1:{port}"}]

    # Nothing runs there yet: the key gets a 503 that says so, at the second hop.
    def down() -> dict[str, Any] | None:
        """What b's router answered a's keyed call (a passes it on as its `next`)."""
        nxt = get(project, key).json()["next"]
        return nxt if nxt.get("error") == "fork_not_ready" else None

    refused = eventually(down)
    assert f"nothing healthy at 127.0.0.1:{port}" in refused["message"]
    status = project.json("sandbox", "get", "dev")["status"]
    assert not status["ready"]
    assert f"nothing healthy at 127.0.0.1:{port}" in status["message"]

    # The env laneway would give the fork starts the same service by hand, correctly.
    env = json.loads(project.run("sandbox", "env", "dev", "b", "--format", "json").stdout)
    assert env["port"] == port
    assert env["env"]["PORT"] == str(port)
    assert env["env"]["VERSION"] == "by-hand"
    assert env["env"]["NEXT_URL"] == project.url("c")
    assert env["env"]["LANEWAY_ROUTING_KEY"] == key
    assert not any(k.startswith("LANEWAY_OWNER") for k in env["env"])  # never reaped by us
    shell = project.run("sandbox", "env", "dev", "b").stdout
    assert f"export PORT={port}\n" in shell
    assert f"export LANEWAY_ROUTING_KEY={key}\n" in shell
    dotenv = project.run("sandbox", "env", "dev", "b", "--format", "dotenv").stdout
    assert f"NEXT_URL={project.url('c')}\n" in dotenv
    by_hand = subprocess.Popen([sys.executable, CHAIN], cwd=env["cwd"],
                               env={"PATH": os.environ["PATH"], **env["env"]},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        reached = eventually(lambda: (r := get(project, key)).status_code == 200 and
                             versions(r.json())[1] == "b:by-hand" and r)
        assert versions(reached.json()) == ["a:baseline", "b:by-hand", "c:baseline"]
        status = project.json("sandbox", "get", "dev")["status"]
        assert status["ready"]
        # The process run by hand is known as the fork: its pid, and the hops it makes.
        assert status["forks"][0]["pid"] == by_hand.pid
        hops = project.json("hops", "--sandbox", "dev", "--limit", "200")
        at_c = [h for h in hops if h["service"] == "c"]
        assert at_c, hops
        assert {h["caller"] for h in at_c} == {"b@dev"}
        assert versions(httpx.get(project.url("a"), timeout=10).json()) == \
            ["a:baseline", "b:baseline", "c:baseline"]
    finally:
        by_hand.kill()
        by_hand.wait()
    # Stopped by hand: reported down again, with the reason, never the baseline.
    refused = eventually(down)
    assert f"nothing healthy at 127.0.0.1:{port}" in refused["message"]
    assert refused["sandbox"] == "dev"


def test_sandbox_exec_runs_a_command_as_the_fork_while_it_runs(project: Project) -> None:
    project.write("sb.yaml", "name: dev2\nlabels: {who: me}\nforks:\n"
                             "  - service: b\n    env: {VERSION: v2}\n")
    key = project.json("sandbox", "apply", "-f", "sb.yaml", "--wait")["routingKey"]
    assert versions(get(project, key).json()) == ["a:baseline", "b:v2", "c:baseline"]
    # c is not forked yet: while the command runs, it is.
    proc = subprocess.Popen([LANEWAY, "sandbox", "exec", "dev2", "c", "--", sys.executable,
                             CHAIN], cwd=project.root, env={**os.environ, "VERSION": "exec"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: (r := get(project, key)).status_code == 200 and
                   versions(r.json()) == ["a:baseline", "b:v2", "c:exec"])
        forks = project.json("sandbox", "get", "dev2")["forks"]
        assert {f["service"] for f in forks} == {"b", "c"}
    finally:
        proc.send_signal(signal.SIGTERM)  # passed on to the command
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert "c@dev2 is back to the baseline" in err, err
    view = project.json("sandbox", "get", "dev2")
    assert view["forks"] == [{"service": "b", "env": {"VERSION": "v2"}}]
    assert view["labels"] == {"who": "me"}
    eventually(lambda: versions(get(project, key).json()) ==
               ["a:baseline", "b:v2", "c:baseline"])
    # Its exit code is the command's.
    failed = project.run("sandbox", "exec", "dev2", "c", "--", sys.executable, "-c",
                         "raise SystemExit(7)", check=False)
    assert failed.returncode == 7
    assert json.loads(project.run("sandbox", "get", "dev2", "-o", "json").stdout)["forks"] \
        == [{"service": "b", "env": {"VERSION": "v2"}}]
