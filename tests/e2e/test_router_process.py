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


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_workers_share_the_ports_each_following_the_feed(project: Project) -> None:
    """`--workers 2`: two router processes on one port (SO_REUSEPORT), each a whole router:
    its own feed (both route the key), its own hop records (both names arrive), restarted
    when one dies, all stopped by one SIGTERM."""
    import asyncio

    from tests.integration.test_hop_push import Operator, until

    project.write("sb.yaml", "name: sb\nforks:\n  - service: c\n    env: {VERSION: v2}\n")
    key = project.json("sandbox", "apply", "-f", "sb.yaml", "--wait")["routingKey"]
    api = json.loads((project.root / ".laneway" / "api.json").read_text())
    token = (project.root / ".laneway" / "token").read_text().strip()
    port, hops_port = free_ports(2)
    receiver = Operator(hops_port)
    await receiver.start()
    router = subprocess.Popen([
        sys.executable, "-m", "laneway.router", "--listen", f"c={port}", "--workers", "2",
        "--routes", f"{api['url']}/v1/routes", f"--token={token}", "--name", "rt",
        "--hops", f"http://127.0.0.1:{hops_port}/v1/hops"])
    try:
        async def served_by_fork() -> bool:
            try:  # a new connection each time: the kernel spreads them over the workers
                async with httpx.AsyncClient(timeout=5) as http:
                    resp = await http.get(f"http://127.0.0.1:{port}/", headers={
                        "baggage": f"laneway-key={key}", "connection": "close"})
                return resp.headers.get("laneway-served-by") == "c@sb"
            except httpx.TransportError:
                return False

        names: set[str] = set()

        async def both_workers_routed() -> bool:
            assert await served_by_fork() or not names  # once routing, always routing
            names.update(b["router"] for b in receiver.batches)
            return names == {"rt-w0", "rt-w1"}

        deadline = asyncio.get_running_loop().time() + 30
        while not await both_workers_routed():
            assert asyncio.get_running_loop().time() < deadline, names
        workers = _children(router.pid)
        assert len(workers) == 2

        os.kill(workers[0], signal.SIGKILL)  # one dies: the other serves, it comes back
        assert await served_by_fork()
        await until(lambda: len(_children(router.pid)) == 2
                    and workers[0] not in _children(router.pid), timeout=15)
        for _ in range(10):
            assert await served_by_fork() or await served_by_fork()
    finally:
        router.terminate()
        assert router.wait(timeout=15) == 0
        await receiver.stop()
    assert not Path(f"/proc/{router.pid}").exists()
