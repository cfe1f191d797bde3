"""Groups 3-5: what sandboxes cost in time and memory, and the control plane's latency.

3. Apply-to-ready over 100 sandboxes, split into the fork process's own start-up (spawn to
   healthy, from the fork's status) and laneway's overhead (the rest); and the time from a fork
   becoming healthy to the router sending it traffic.
4. Density: 100 sandboxes, each forking one service of a 5-service baseline, under mixed
   traffic: memory (RSS) of the whole system against 100 full copies of the baseline, and
   cross-talk (every response must come from the versions its key selects).
5. The control plane's apply/get/list latency with 1,000 sandboxes stored.

Services are `tests/apps/chain.py` (standard-library HTTP servers); everything goes through a
real `laneway up` daemon and its API.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHAIN = str(ROOT / "tests" / "apps" / "chain.py")
LANEWAY = str(Path(sys.executable).parent / "laneway")
sys.path.insert(0, str(Path(__file__).parent))
from peers import free_port  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):7.2f} ms   p95 {pct(values, 0.95):7.2f} ms"


class Env:
    """A `laneway up` daemon over a chain of `n` services s0 -> s1 -> ... (public ports)."""

    def __init__(self, services: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="laneway-bench-"))
        self.names = [f"s{i}" for i in range(services)]
        self.ports = {name: free_port() for name in self.names}
        lines = ["name: bench", "services:"]
        for i, name in enumerate(self.names):
            lines += [f"  {name}:", f"    run: [{sys.executable}, {CHAIN}]",
                      f"    port: {self.ports[name]}", "    health: /healthz"]
            if i + 1 < services:
                lines += [f"    env: {{NEXT_URL: '${{services.{self.names[i + 1]}.url}}'}}"]
        (self.root / "laneway.yaml").write_text("\n".join(lines) + "\n")
        subprocess.run([LANEWAY, "up", "--detach"], cwd=self.root, check=True,
                       stdout=subprocess.DEVNULL)
        api = json.loads((self.root / ".laneway" / "api.json").read_text())
        self.daemon_pid = int(api["pid"])
        token = (self.root / ".laneway" / "token").read_text().strip()
        self.api = httpx.Client(base_url=api["url"], timeout=120,
                                headers={"authorization": f"Bearer {token}"})

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/"

    def close(self) -> None:
        self.api.close()
        subprocess.run([LANEWAY, "down"], cwd=self.root, check=False, stdout=subprocess.DEVNULL)


def _poll(url: str, key: str, fork: str, seen: list[float], stop: threading.Event) -> None:
    """The router's view from outside: a keyed request every 2 ms until the fork answers."""
    with httpx.Client() as client:
        while not stop.is_set():
            resp = client.get(url, headers={"baggage": f"laneway-key={key}"})
            if resp.status_code == 200 and resp.headers.get("laneway-served-by") == fork:
                seen.append(time.time())
                return
            time.sleep(0.002)


def group3(count: int) -> dict[str, Any]:
    env = Env(2)
    try:
        total, own, visible = [], [], []
        for i in range(count):
            seen: list[float] = []
            stop = threading.Event()
            start = time.perf_counter()
            first = env.api.put(f"/v1/sandboxes/sb{i}", json={"forks": [
                {"service": "s1", "env": {"VERSION": f"v{i}"}}]})
            poller = threading.Thread(target=_poll, args=(
                env.url("s1"), first.json()["routingKey"], f"s1@sb{i}", seen, stop))
            poller.start()
            view = env.api.get(f"/v1/sandboxes/sb{i}", params={"wait": 30}).json()
            total.append((time.perf_counter() - start) * 1000)
            poller.join(10)
            stop.set()
            fork = view["status"]["forks"][0]
            assert view["status"]["ready"], view["status"]
            own.append((fork["readyAt"] - fork["startedAt"]) * 1000)
            if seen:
                visible.append((seen[0] - fork["readyAt"]) * 1000)
        overhead = [t - o for t, o in zip(total, own, strict=True)]
        print(f"\n3. sandbox lifecycle over {count} sandboxes (one fork each, via the API)")
        print(f"   apply to ready      {summary(total)}")
        print(f"   fork's own start-up {summary(own)}   (spawn to first healthy check)")
        print(f"   laneway overhead    {summary(overhead)}   goal p95 < 250 ms: "
              f"{'met' if pct(overhead, 0.95) < 250 else 'NOT met'}")
        print(f"   healthy to routed   {summary(visible)}   (fork healthy -> first request "
              f"served by it, polled every 2 ms) goal p95 < 100 ms: "
              f"{'met' if pct(visible, 0.95) < 100 else 'NOT met'}")
        return {"overhead_p95": pct(overhead, 0.95), "visible_p95": pct(visible, 0.95)}
    finally:
        env.close()


def _latencies(url: str, headers: dict[str, str], count: int) -> list[float]:
    out = []
    with httpx.Client(timeout=10) as client:
        for _ in range(20):
            client.get(url, headers=headers)  # warm-up
        for _ in range(count):
            start = time.perf_counter()
            client.get(url, headers=headers).raise_for_status()
            out.append((time.perf_counter() - start) * 1000)
    return out


def three_hops(count: int = 500) -> dict[str, float]:
    """A request through a 3-service chain, each hop through laneway's router, against the same
    chain wired directly (services calling each other's own ports) in the same run."""
    env = Env(3)
    direct: list[subprocess.Popen[bytes]] = []
    try:
        ports = [free_port() for _ in range(3)]
        for i in reversed(range(3)):
            extra = {"NEXT_URL": f"http://127.0.0.1:{ports[i + 1]}"} if i < 2 else {}
            direct.append(subprocess.Popen(
                [sys.executable, CHAIN], stdout=subprocess.DEVNULL,
                env={**os.environ, "PORT": str(ports[i]), "LANEWAY_SERVICE": f"s{i}", **extra}))
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
        key = env.api.put("/v1/sandboxes/mid", params={"wait": 30}, json={"forks": [
            {"service": "s1"}]}).json()["routingKey"]
        ref = _latencies(f"http://127.0.0.1:{ports[0]}/", {}, count)
        plain = _latencies(env.url("s0"), {}, count)
        keyed = _latencies(env.url("s0"), {"baggage": f"laneway-key={key}"}, count)
        print(f"\n   3-hop latency: {count} sequential GETs through s0 -> s1 -> s2 "
              "(stdlib http.server services; each opens a new connection to the next hop)")
        print(f"   direct (no router)  {summary(ref)}")
        print(f"   via laneway, no key {summary(plain)}   "
              f"(+{statistics.median(plain) - statistics.median(ref):.2f} ms p50, 3 routers)")
        print(f"   via laneway, keyed  {summary(keyed)}   "
              f"(+{statistics.median(keyed) - statistics.median(ref):.2f} ms p50, fork of s1)")
        return {"direct_p50": statistics.median(ref), "keyed_p50": statistics.median(keyed)}
    finally:
        for proc in direct:
            proc.terminate()
            proc.wait()
        env.close()


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def versions(body: dict[str, Any]) -> list[str]:
    out = []
    while body:
        out.append(f"{body['service']}:{body['version']}")
        body = body["next"]
    return out


def group4(count: int) -> dict[str, Any]:
    env = Env(5)
    try:
        baseline_pids = [s["pid"] for s in env.api.get("/v1/services").json()]
        baseline_mb = rss_mb(baseline_pids)
        daemon_before = rss_mb([env.daemon_pid])
        keys: dict[str | None, list[str]] = {None: [f"{n}:baseline" for n in env.names]}
        views = []
        for i in range(count):
            service = env.names[i % 5]
            env.api.put(f"/v1/sandboxes/d{i}", json={"forks": [
                {"service": service, "env": {"VERSION": f"d{i}"}}]})
        for i in range(count):
            view = env.api.get(f"/v1/sandboxes/d{i}", params={"wait": 60}).json()
            assert view["status"]["ready"], view["status"]
            views.append(view)
            service = env.names[i % 5]
            keys[view["routingKey"]] = [f"{n}:{'d' + str(i) if n == service else 'baseline'}"
                                        for n in env.names]
        rng = random.Random(1)
        wrong = 0
        requests = 1000
        with httpx.Client(timeout=30) as client:
            for _ in range(requests):
                key = rng.choice(list(keys))
                headers = {"baggage": f"laneway-key={key}"} if key else {}
                got = versions(client.get(env.url("s0"), headers=headers).json())
                wrong += got != keys[key]
        fork_pids = [f["pid"] for v in env.api.get("/v1/sandboxes").json()
                     for f in v["status"]["forks"]]
        system_mb = rss_mb([env.daemon_pid, *baseline_pids, *fork_pids])
        copies_mb = count * baseline_mb  # the services alone: a copy's own router not counted
        print(f"\n4. density: {count} sandboxes, each forking one of 5 services; {requests} "
              "requests with random keys (or none) through the 5-hop chain")
        print(f"   whole system (daemon + 5 baseline + {len(fork_pids)} forks): "
              f"{system_mb:8.0f} MB RSS")
        print(f"   {count} full copies of the 5 services:              "
              f"{copies_mb:8.0f} MB RSS   ratio {system_mb / copies_mb:.3f}  (daemon alone: "
              f"{daemon_before:.0f} MB before the sandboxes)")
        print(f"   cross-talk: {wrong} of {requests} responses from the wrong versions")
        return {"system_mb": system_mb, "copies_mb": copies_mb, "wrong": wrong}
    finally:
        env.close()


def group5(stored: int) -> dict[str, Any]:
    env = Env(1)
    try:
        applies = []
        for i in range(stored):
            start = time.perf_counter()
            resp = env.api.put(f"/v1/sandboxes/c{i}", json={"labels": {"n": str(i)}})
            applies.append((time.perf_counter() - start) * 1000)
            assert resp.status_code == 201
        gets, lists = [], []
        for _ in range(200):
            start = time.perf_counter()
            env.api.get(f"/v1/sandboxes/c{random.randrange(stored)}").raise_for_status()
            gets.append((time.perf_counter() - start) * 1000)
        for _ in range(10):
            start = time.perf_counter()
            assert len(env.api.get("/v1/sandboxes").json()) == stored
            lists.append((time.perf_counter() - start) * 1000)
        print(f"\n5. control plane with {stored} sandboxes stored (SQLite, via the HTTP API, "
              "one client)")
        print(f"   apply (create) {summary(applies)}")
        print(f"   get            {summary(gets)}")
        print(f"   list (all)     {summary(lists)}")
        return {"apply_p50": statistics.median(applies), "get_p50": statistics.median(gets),
                "list_p50": statistics.median(lists)}
    finally:
        env.close()


def main() -> dict[str, Any]:
    return {"lifecycle": group3(int(os.environ.get("BENCH_SANDBOXES", "100"))),
            "density": group4(int(os.environ.get("BENCH_DENSITY", "100"))),
            "control": group5(int(os.environ.get("BENCH_STORED", "1000")))}


if __name__ == "__main__":
    main()
