"""Runs on a cluster in Istio mode: no laneway router sees the traffic, so the operator reads the
fork pods' own Istio request counters (`istio_requests_total` at `:15020/stats/prometheus`)
when a run starts and when it ends. The pods' sidecars are real HTTP servers on loopback
serving the stats page, their counters moved by the "test"; the cluster is our `ApiCluster`
interface in memory (the operator's HTTP side is tested against the API emulation in
`test_cluster_loop.py`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from laneway.runtime.kubernetes.api import ClusterApi, RunResult, RunStart
from laneway.runtime.kubernetes.telemetry import PodTelemetry

KEY = "k3y0000000ab"


class Pods:
    """The fork pods' sidecar stats endpoints: a counter per pod and response code."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}  # (ip, code, flags) -> requests
        self.servers: list[asyncio.Server] = []

    def serve_request(self, ip: str, code: str = "200", flags: str = "-") -> None:
        self.counts[ip, code, flags] = self.counts.get((ip, code, flags), 0) + 1

    def page(self, ip: str) -> str:
        lines = ["# TYPE istio_requests_total counter"]
        for (at, code, flags), count in sorted(self.counts.items()):
            if at == ip:
                for reporter in ("destination", "source"):  # only inbound counts
                    lines.append(
                        f'istio_requests_total{{reporter="{reporter}",source_workload="web",'
                        f'destination_workload="pricing-lw-sb-a",destination_workload_namespace'
                        f'="shop",response_code="{code}",grpc_response_status="",'
                        f'response_flags="{flags}",request_protocol="http"}} {count}')
        lines.append('istio_build{component="proxy",tag="1.24.0"} 1')
        return "\n".join(lines) + "\n"

    async def start(self, ip: str) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"GET /stats/prometheus ")
            body = self.page(ip).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n"
                         b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        self.servers.append(await asyncio.start_server(handle, ip, 15020))


class MemoryApiCluster:
    """The operator API's view of a cluster (`ApiCluster`, our interface), in memory."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects_ = objects

    def _of(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [o for o in self.objects_ if o["kind"] == kind and (
            namespace is None or o["metadata"]["namespace"] == namespace)]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self._of(kind, namespace) if o["metadata"]["name"] == name),
                    None)

    def namespaced(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return self._of(kind, namespace)

    def custom(self, kind: str) -> list[dict[str, Any]]:
        return self._of(kind)

    def objects(self, namespace: str, sandbox: str | None = None) -> list[dict[str, Any]]:
        return self._of("Service", namespace)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        label, _, value = selector.partition("=")
        return [p for p in self._of("Pod", namespace)
                if p["metadata"].get("labels", {}).get(label) == value]

    def put_custom(self, kind: str, namespace: str, name: str,
                   body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        raise NotImplementedError

    def apply(self, verb: str, kind: str, namespace: str, name: str,
              body: Mapping[str, Any] | None) -> None:
        raise NotImplementedError

    def identity(self, token: str) -> dict[str, Any] | None:
        return None

    def may(self, identity: Mapping[str, Any], verb: str, plural: str,
            namespace: str) -> bool:
        return True


def pod(name: str, ip: str) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "shop",
                                        "labels": {"laneway.dev/sandbox": "sb-a"}},
            "status": {"phase": "Running", "podIP": ip}}


@pytest.fixture
async def pods() -> AsyncIterator[Pods]:
    found = Pods()
    try:
        yield found
    finally:
        for server in found.servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()


async def test_an_istio_run_counts_the_fork_pods_requests_and_says_paths_are_missing(
        pods: Pods) -> None:
    ips = ["127.3.0.11", "127.3.0.12"]  # the fork's two pods
    for ip in ips:
        await pods.start(ip)
    sandbox = {"kind": "Sandbox", "apiVersion": "laneway.dev/v1alpha1",
               "metadata": {"name": "sb-a", "namespace": "shop", "uid": "u1"},
               "spec": {"forks": [{"workload": {"name": "pricing"}, "image": "p:2"}]},
               "status": {"routingKey": KEY, "conditions": [
                   {"type": "Ready", "status": "True", "reason": "ForksReady"}]}}
    cluster = MemoryApiCluster([
        sandbox, pod("pricing-lw-sb-a-6d5f7-abcde", ips[0]),
        pod("pricing-lw-sb-a-6d5f7-fghij", ips[1]),
        pod("other-thing-1", "127.3.0.13")])  # not the fork's: never scraped
    state = ClusterApi(cluster, "istio", telemetry=PodTelemetry(timeout=2.0), settle_s=0.0)

    pods.serve_request(ips[0])  # before the run: not the run's
    report = await state.start_run(RunStart(sandbox="sb-a", command="pytest"), "shop")
    assert report["executor"] == "client"
    assert "paths (hops) and leaks are not available" in report["note"]
    pods.serve_request(ips[0])
    pods.serve_request(ips[1])
    pods.serve_request(ips[1], "503", "UH")  # Envoy answered: no healthy upstream
    pods.serve_request(ips[1], "500")
    done = await state.finish_run(report["id"], RunResult(exit_code=0, duration_s=1.0))
    assert done["verdict"] == "passed"
    assert done["forks_reached"] == {"pricing@sb-a": 3}
    assert done["fork_responses"]["pricing@sb-a"] == {"2xx": 2, "5xx": 2}
    assert done["hops"] == 0
    assert "paths (hops) and leaks are not available" in done["note"]

    # A run whose test never reached the fork is vacuous, with the reason of this mode.
    second = await state.start_run(RunStart(sandbox="sb-a", command="pytest"), "shop")
    vacuous = await state.finish_run(second["id"], RunResult(exit_code=0, duration_s=1.0))
    assert vacuous["verdict"] == "vacuous"
    assert "by its pods' Istio counters" in vacuous["note"]
