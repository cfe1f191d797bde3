"""`make bench`: what a sandbox costs in time, measured on this machine.

1. Apply-to-ready: PUT a sandbox that forks one service and wait until it is ready, through the
   API (so CLI start-up is not counted), over N sandboxes; also the part of it that is the fork
   process's own start-up (spawn to healthy), and laneway's overhead (the rest).
2. 3-hop latency: GET through a chain a -> b -> c whose hops all pass laneway's routers, with and
   without a routing key, against the same chain wired directly (no router) in the same run.

Services are `tests/apps/chain.py` (standard library HTTP servers). Figures are medians and
p95/p99 over the stated counts; conditions are printed with them.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHAIN = str(ROOT / "tests" / "apps" / "chain.py")
LANEWAY = str(Path(sys.executable).parent / "laneway")
SANDBOXES = int(os.environ.get("BENCH_SANDBOXES", "30"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "500"))


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> str:
    return (f"p50 {statistics.median(values):7.2f} ms   p95 {pct(values, 0.95):7.2f} ms   "
            f"p99 {pct(values, 0.99):7.2f} ms")


def latency(url: str, headers: dict[str, str], count: int) -> list[float]:
    out = []
    with httpx.Client(timeout=10) as client:
        for _ in range(20):
            client.get(url, headers=headers)
        for _ in range(count):
            start = time.perf_counter()
            resp = client.get(url, headers=headers)
            out.append((time.perf_counter() - start) * 1000)
            assert resp.status_code == 200, resp.text
    return out


def direct_chain(ports: list[int]) -> list[subprocess.Popen[bytes]]:
    """The same three services, calling each other directly: the reference without routers."""
    procs = []
    names = ["a", "b", "c"]
    for i, name in enumerate(names):
        env = {**os.environ, "PORT": str(ports[i]), "LANEWAY_SERVICE": name}
        if i < 2:
            env["NEXT_URL"] = f"http://127.0.0.1:{ports[i + 1]}"
        procs.append(subprocess.Popen([sys.executable, CHAIN], env=env,
                                      stdout=subprocess.DEVNULL))
    for port in ports:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    return procs


def main() -> None:
    print(f"laneway bench: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"services = tests/apps/chain.py (stdlib http.server)")
    root = Path(tempfile.mkdtemp(prefix="laneway-bench-"))
    ports = free_ports(3)
    (root / "laneway.yaml").write_text(f"""
name: bench
services:
  c: {{run: [{sys.executable}, {CHAIN}], port: {ports[2]}, health: /healthz}}
  b: {{run: [{sys.executable}, {CHAIN}], port: {ports[1]}, health: /healthz,
      env: {{NEXT_URL: "${{services.c.url}}"}}}}
  a: {{run: [{sys.executable}, {CHAIN}], port: {ports[0]}, health: /healthz,
      env: {{NEXT_URL: "${{services.b.url}}"}}}}
""")
    subprocess.run([LANEWAY, "up", "--detach"], cwd=root, check=True,
                   stdout=subprocess.DEVNULL)
    try:
        api = json.loads((root / ".laneway" / "api.json").read_text())["url"]
        token = (root / ".laneway" / "token").read_text().strip()
        client = httpx.Client(base_url=api, headers={"authorization": f"Bearer {token}"},
                              timeout=60)
        total, own = [], []
        keys = []
        for i in range(SANDBOXES):
            start = time.perf_counter()
            view = client.put(f"/v1/sandboxes/bench-{i}", params={"wait": 30}, json={
                "forks": [{"service": "b", "env": {"VERSION": f"v{i}"}}]}).json()
            total.append((time.perf_counter() - start) * 1000)
            assert view["status"]["ready"], view["status"]
            fork = view["status"]["forks"][0]
            own.append((fork["readyAt"] - fork["startedAt"]) * 1000)
            keys.append(view["routingKey"])
        overhead = [t - o for t, o in zip(total, own, strict=True)]
        print(f"\n1. apply-to-ready over {SANDBOXES} sandboxes (one fork each, via the API)")
        print(f"   total               {summary(total)}")
        print(f"   fork's own start-up {summary(own)}")
        print(f"   laneway overhead    {summary(overhead)}   (total minus start-up)")

        direct_ports = free_ports(3)
        procs = direct_chain(direct_ports)
        try:
            ref = latency(f"http://127.0.0.1:{direct_ports[0]}/", {}, REQUESTS)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
        base = latency(f"http://127.0.0.1:{ports[0]}/", {}, REQUESTS)
        keyed = latency(f"http://127.0.0.1:{ports[0]}/",
                        {"baggage": f"laneway-key={keys[-1]}"}, REQUESTS)
        print(f"\n2. 3-hop latency, {REQUESTS} sequential GETs, one keep-alive client connection, "
              f"{SANDBOXES} sandboxes in the table")
        print(f"   direct (no router)  {summary(ref)}")
        print(f"   via laneway, no key {summary(base)}   "
              f"(+{statistics.median(base) - statistics.median(ref):.2f} ms p50 for 3 routers)")
        print(f"   via laneway, keyed  {summary(keyed)}   "
              f"(+{statistics.median(keyed) - statistics.median(ref):.2f} ms p50 for 3 routers)")
    finally:
        subprocess.run([LANEWAY, "down"], cwd=root, check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
