"""A router outside the daemon (as a sidecar runs), fed over HTTP by the routes feed: it follows
route changes, and keeps serving its last table while the control plane is stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import Project, free_ports


def wait_for(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_standalone_router_follows_the_feed_and_survives_the_control_plane(
    project: Project,
) -> None:
    project.write("sb.yaml", "name: sb\nforks:\n  - service: c\n    env: {VERSION: v2}\n")
    key = project.json("sandbox", "apply", "-f", "sb.yaml", "--wait")["routingKey"]
    api = json.loads((project.root / ".laneway" / "api.json").read_text())
    token = (project.root / ".laneway" / "token").read_text().strip()
    (port,) = free_ports(1)
    with subprocess.Popen([sys.executable, "-m", "laneway.router", "--listen", f"c={port}",
                           "--routes", f"{api['url']}/v1/routes", f"--token={token}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as router:
        try:
            url = f"http://127.0.0.1:{port}/"

            def served_by(k: str | None) -> str:
                headers = {"baggage": f"laneway-key={k}"} if k else {}
                try:
                    return httpx.get(url, headers=headers, timeout=5).headers.get(
                        "laneway-served-by", "")
                except httpx.TransportError:
                    return ""

            wait_for(lambda: served_by(key) == "c@sb")
            assert served_by(None) == "c"
            project.write("sb2.yaml", "name: sb2\nforks:\n  - service: c\n")
            key2 = project.json("sandbox", "apply", "-f", "sb2.yaml", "--wait")["routingKey"]
            wait_for(lambda: served_by(key2) == "c@sb2")  # a change reaches it over the feed

            os.kill(api["pid"], signal.SIGSTOP)  # the control plane is away
            try:
                time.sleep(0.5)
                assert served_by(key) == "c@sb"
                assert served_by(None) == "c"
            finally:
                os.kill(api["pid"], signal.SIGCONT)
        finally:
            router.terminate()
            assert router.wait(timeout=10) == 0


def test_listeners_take_their_protocol_on_the_command_line(tmp_path: Path) -> None:
    web, api = free_ports(2)
    log = tmp_path / "router.log"
    with log.open("w") as err, subprocess.Popen(
            [sys.executable, "-m", "laneway.router", "--listen", f"web={web}",
             "--listen", f"shop.api:grpc={api}/grpc", "--routes", "http://127.0.0.1:1/v1/routes"],
            stdout=subprocess.PIPE, stderr=err, text=True) as router:
        try:
            assert router.stdout is not None
            lines = [router.stdout.readline() for _ in range(2)]
            assert lines == [f"laneway router for web on 127.0.0.1:{web}\n",
                             f"laneway router for shop.api:grpc on 127.0.0.1:{api} (grpc)\n"], \
                log.read_text()
        finally:
            router.terminate()
            assert router.wait(timeout=10) == 0
    bad = subprocess.run([sys.executable, "-m", "laneway.router", "--listen", f"api={api}/spdy",
                          "--routes", "http://127.0.0.1:1/v1/routes"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2
    assert "PROTOCOL one of http, h2c, grpc" in bad.stderr
    assert "Traceback" not in bad.stderr
