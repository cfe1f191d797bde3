"""Kubernetes router mode on loopback, with everything real but the API server: the operator's
passes run against the in-memory `Cluster` (our interface; it hands out cluster IPs on
127.0.0.0/8), the operator's routes feed is served over HTTP, and the router sidecar is started
from the rendered container's own command line. Pods are processes: the baseline application
on 127.0.0.1 (beside its sidecar), the fork at its Service's cluster IP, and a caller that is
not forked (and so has no sidecar) in front.

Only what a pod network provides is substituted: the feed's address (a cluster DNS name), the
listen address and port (loopback, a free port), and the token file (a projected token)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from laneway.core.kubernetes.plan import FINALIZER
from laneway.runtime.kubernetes.cluster import MemoryCluster
from laneway.runtime.kubernetes.feed import FixedToken, feed_app
from laneway.runtime.kubernetes.operator import (
    OperatorSettings,
    RoutesPublisher,
    reconcile,
    reconcile_route_group,
)
from tests.e2e.conftest import free_ports

CHAIN = Path(__file__).parents[1] / "apps" / "chain.py"
ROUTER = OperatorSettings(mode="router")
TOKEN = "projected-token-for-the-test"


def baseline(app_port: int, service_port: int) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: pricing, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: pricing}}}}
  template:
    metadata: {{labels: {{app: pricing}}}}
    spec:
      containers:
        - name: pricing
          image: registry.example/pricing:1.4.0
          ports: [{{name: http, containerPort: {app_port}}}]
          env: [{{name: VERSION, value: baseline}}]
---
apiVersion: v1
kind: Service
metadata: {{name: pricing, namespace: shop}}
spec:
  selector: {{app: pricing}}
  ports: [{{name: http, port: {service_port}, targetPort: http}}]
"""))


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # pytest owns the signals


@contextlib.asynccontextmanager
async def serving_feed(publisher: RoutesPublisher, port: int) -> AsyncIterator[None]:
    server = _Server(uvicorn.Config(feed_app(publisher.feed, FixedToken(TOKEN)),
                                    host="127.0.0.1", port=port, log_level="warning",
                                    lifespan="off", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the feed server did not start"
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def processes(logs: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (logs / f"{len(started)}.log").open("wb") as log:
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            proc.wait(timeout=10)
        for log in sorted(logs.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()}")  # shown when the test fails


def pod_env(container: dict[str, Any], **extra: str) -> dict[str, str]:
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    return {"PATH": os.environ["PATH"], "LANEWAY_SERVICE": "pricing", **env, **extra}


def sidecar_command(deployment: dict[str, Any], feed_url: str, listen_port: int,
                    token_file: Path, hops_url: str | None = None) -> list[str]:
    """The rendered sidecar's command line, with the pod network's parts put on loopback (the
    operator's hop intake at `hops_url`; without one, no hop records are sent)."""
    router = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                  if c["name"] == "laneway-router")
    args = list(router["args"])
    args[args.index("--host") + 1] = "127.0.0.1"
    assert args[args.index("--routes") + 1].endswith(":8790/v1/routes")
    args[args.index("--routes") + 1] = feed_url
    hops = args.index("--hops")
    assert args[hops + 1].endswith(":8790/v1/hops")
    if hops_url is None:
        del args[hops:hops + 2]
    else:
        args[hops + 1] = hops_url
    args[args.index("--token-file") + 1] = str(token_file)
    listen = args.index("--listen") + 1
    args[listen] = args[listen].rsplit("=", 1)[0] + f"={listen_port}"
    assert router["command"][0] == "python"
    return [sys.executable, *router["command"][1:], *args]


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if await check():
                return
        except httpx.TransportError:
            pass
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_router_mode_end_to_end(tmp_path: Path) -> None:
    app_port, service_port, feed_port, router_port, web_port = free_ports(5)
    cluster = MemoryCluster(baseline(app_port, service_port), service_ips="127.0.0.")
    now = datetime.now(UTC)
    sandbox: dict[str, Any] = {
        "apiVersion": "laneway.dev/v1alpha1", "kind": "Sandbox",
        "metadata": {"name": "sb-a", "namespace": "shop", "finalizers": [FINALIZER],
                     "uid": "5b0c2d4e-0000-4000-8000-00000000000a",
                     "creationTimestamp": now.isoformat()},
        "spec": {"labels": {"team": "pay"}, "ttl": "1h", "forks": [
            {"workload": {"name": "pricing"}, "env": [{"name": "VERSION", "value": "fork"}]}]}}
    plan, status = reconcile(sandbox, cluster, now, ROUTER)
    assert plan.conditions[0]["reason"] == "ForksStarting"
    key = status["routingKey"]
    sandbox["status"] = status
    cluster.apply("replace", "Sandbox", "shop", "sb-a", sandbox)

    injected = cluster.store[("Deployment", "shop", "pricing")]
    fork = cluster.store[("Deployment", "shop", "pricing-lw-sb-a")]
    fork_ip = cluster.store[("Service", "shop", "pricing-lw-sb-a")]["spec"]["clusterIP"]
    assert fork_ip.startswith("127.0.0.")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    publisher = RoutesPublisher()
    publisher.publish(publisher.build(cluster))
    feed_url = f"http://127.0.0.1:{feed_port}/v1/routes"

    async with httpx.AsyncClient(timeout=5) as http:
        with processes(tmp_path) as start:
            app = injected["spec"]["template"]["spec"]["containers"][0]
            start([sys.executable, str(CHAIN)], pod_env(app, PORT=str(app_port)))
            fork_app = fork["spec"]["template"]["spec"]["containers"][0]
            start([sys.executable, str(CHAIN)],
                  pod_env(fork_app, PORT=str(service_port), HOST=fork_ip))
            router = start(sidecar_command(injected, feed_url, router_port, token_file))
            url = f"http://127.0.0.1:{router_port}/"
            # A caller that is not forked needs no sidecar: its call to `pricing` (here the
            # router's port, where kube-proxy sends the Service's traffic) carries the baggage
            # it received, and pricing's sidecar routes it.
            start([sys.executable, str(CHAIN)], pod_env(
                {"env": [{"name": "VERSION", "value": "baseline"}]}, LANEWAY_SERVICE="web",
                PORT=str(web_port), NEXT_URL=url))
            web_url = f"http://127.0.0.1:{web_port}/"

            async def get(routing_key: str | None = None) -> httpx.Response:
                headers = {"baggage": f"laneway-key={routing_key}"} if routing_key else {}
                return await http.get(url, headers=headers)

            async def answers(routing_key: str | None, version: str) -> bool:
                resp = await get(routing_key)
                return resp.status_code == 200 and resp.json()["version"] == version

            # The operator is not up yet: the pod serves its own traffic all the same.
            await eventually(lambda: answers(None, "baseline"))
            assert (await get()).headers["laneway-served-by"] == "pricing.shop"
            assert await answers(key, "baseline")  # no table yet: nothing is forked
            async with serving_feed(publisher, feed_port):
                await run_with_the_operator(http, get, answers, cluster, publisher, key,
                                            sandbox, fork, feed_url, web_url)
            assert router.poll() is None


async def run_with_the_operator(http: httpx.AsyncClient, get: Any, answers: Any,
                                cluster: MemoryCluster, publisher: RoutesPublisher, key: str,
                                sandbox: dict[str, Any], fork: dict[str, Any],
                                feed_url: str, web_url: str) -> None:
    async def status_of(routing_key: str) -> bool:
        return bool((await get(routing_key)).status_code == 503)

    # The fork has no available pod yet: its key gets a 503 saying so, not the baseline.
    await eventually(lambda: status_of(key))
    starting = await get(key)
    assert "pricing-lw-sb-a has no available pod yet" in starting.text
    assert await answers(None, "baseline")

    # The kubelet reports the fork ready; the operator's next table routes the key.
    fork["status"] = {"availableReplicas": 1, "updatedReplicas": 1}
    cluster.apply("replace", "Deployment", "shop", "pricing-lw-sb-a", fork)
    plan, _status = reconcile(sandbox, cluster, None, ROUTER)  # as the Deployment event does
    assert plan.conditions[0]["reason"] == "ForksReady"
    assert publisher.publish(publisher.build(cluster))
    await eventually(lambda: answers(key, "fork"))
    resp = await get(key)
    assert resp.headers["laneway-served-by"] == "pricing.shop@sb-a"
    assert await answers("zzzzzzzzzzzz", "baseline")  # an unknown key: the baseline
    assert await answers(None, "baseline")

    # Two hops: the key reaches the fork behind a caller, and only the keyed request does.
    through_web = await http.get(web_url, headers={"baggage": f"laneway-key={key}"})
    assert through_web.json()["next"]["version"] == "fork"
    assert (await http.get(web_url)).json()["next"]["version"] == "baseline"

    # A route group over the sandbox's labels routes its own key to the same fork.
    group: dict[str, Any] = {
        "apiVersion": "laneway.dev/v1alpha1", "kind": "RouteGroup",
        "metadata": {"name": "pay", "namespace": "shop", "finalizers": [FINALIZER]},
        "spec": {"match": {"labels": {"team": "pay"}}}}
    _, group_status = reconcile_route_group(group, cluster, ROUTER)
    assert group_status["sandboxes"] == ["sb-a"]
    group["status"] = group_status
    cluster.apply("replace", "RouteGroup", "shop", "pay", group)
    publisher.publish(publisher.build(cluster))
    await eventually(lambda: answers(group_status["routingKey"], "fork"))

    # The feed is not open to anyone in the cluster.
    refused = await http.get(feed_url)
    assert refused.status_code == 401
    assert "authorization" in refused.json()["error"]

    # Deleting the sandbox removes its fork and its routes; the key falls back.
    sandbox["metadata"]["deletionTimestamp"] = datetime.now(UTC).isoformat()
    reconcile(sandbox, cluster, None, ROUTER)
    assert ("Deployment", "shop", "pricing-lw-sb-a") not in cluster.store
    cluster.apply("delete", "Sandbox", "shop", "sb-a", None)
    publisher.publish(publisher.build(cluster))
    await eventually(lambda: answers(key, "baseline"))
    assert (await get(key)).headers["laneway-served-by"] == "pricing.shop"
