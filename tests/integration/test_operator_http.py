"""The real operator (kopf's dispatch, the official Kubernetes client, laneway's handlers) as a
process, against a Kubernetes API emulation that speaks the real HTTP API with watches
(`tests.k8s.apiserver`: KMock's emulator with selectors, patch types, status, finalizers and
garbage collection), loaded with the CRDs and a baseline. The test plays the
controller-manager's part (a Deployment's status)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml

from laneway.core.kubernetes.manifests import install_manifests
from laneway.core.kubernetes.plan import FINALIZER
from tests.k8s.apiserver import ApiServer

DATA = Path(__file__).parents[1] / "data" / "k8s"
ISTIO = Path(__file__).parents[3] / "shared" / "data" / "istio" / "crds-networking.yaml"
SANDBOXES = "laneway.dev/v1alpha1/sandboxes"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
VIRTUAL_SERVICES = "networking.istio.io/v1/virtualservices"


def load_api(api: ApiServer, baseline: list[dict[str, Any]] | None = None) -> None:
    """The CRDs, the kinds the operator touches, and a baseline (by default the team's of
    tests/data/k8s/baseline.yaml)."""
    for crd in install_manifests("laneway-system", "laneway:test", "istio"):
        if crd["kind"] == "CustomResourceDefinition":
            api.add_crd(crd)
    for crd in yaml.safe_load_all(ISTIO.read_text()):
        if crd and crd["spec"]["names"]["kind"] == "VirtualService":
            api.add_crd(crd)
    api.add_resource("apps", "v1", "deployments", "Deployment", status=True)
    api.add_resource("", "v1", "services", "Service")
    api.add_resource("", "v1", "pods", "Pod", status=True)
    api.add_resource("", "v1", "events", "Event")
    api.add_resource("events.k8s.io", "v1", "events", "Event")
    api.add_resource("", "v1", "namespaces", "Namespace", namespaced=False)
    if baseline is None:
        baseline = [o for o in yaml.safe_load_all((DATA / "baseline.yaml").read_text()) if o]
    for obj in baseline:
        api.put(obj)


async def eventually(what: str, check: Callable[[], Awaitable[Any]],
                     timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class Operator:
    """`kopf run -m laneway.runtime.kubernetes.handlers` against the emulation."""

    def __init__(self, url: str, folder: Path, env: dict[str, str] | None = None) -> None:
        from tests.e2e.conftest import free_ports

        # Its API on a port of its own: operators of tests running at once never share one.
        self.env = {"LANEWAY_ROUTING_MODE": "istio",
                    "LANEWAY_API_ADDRESS": f"127.0.0.1:{free_ports(1)[0]}", **(env or {})}
        self.kubeconfig = folder / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": url}}],
            "users": [{"name": "test", "user": {"token": "operator-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
        self.log = folder / "operator.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
                "-m", "laneway.runtime.kubernetes.handlers", env=env, stdout=out,
                stderr=asyncio.subprocess.STDOUT)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[
        tuple[ApiServer, Operator, ControllerManager]]:
    async with ApiServer() as api, kmock.Server(api) as server:
        load_api(api)
        operator = Operator(str(server.url).rstrip("/"), tmp_path)
        controller = ControllerManager(api)
        task = asyncio.get_running_loop().create_task(controller.run())
        await operator.start()
        try:
            yield api, operator, controller
        finally:
            task.cancel()
            await operator.stop()
            print(operator.output())  # shown when the test fails


SANDBOX = {
    "apiVersion": "laneway.dev/v1alpha1", "kind": "Sandbox",
    "metadata": {"name": "sb-a", "namespace": "shop"},
    "spec": {"ttl": "2h", "forks": [
        {"workload": {"kind": "Deployment", "name": "pricing"},
         "image": "registry.example/pricing:pr-1", "env": [{"name": "DISCOUNT", "value": "20"}]}]},
}


async def call(api: ApiServer, method: str, path: str, body: Any = None,
               content_type: str = "application/json") -> dict[str, Any]:
    async with api.request(method, path, json=body,
                           headers={"Content-Type": content_type}) as resp:
        data: dict[str, Any] = await resp.json()
        assert resp.status < 400, data
        return data


def ready(api: ApiServer) -> dict[str, Any] | None:
    sandbox = api.get_object(SANDBOXES, "shop", "sb-a")
    conditions = ((sandbox or {}).get("status") or {}).get("conditions") or []
    return sandbox if any(c["type"] == "Ready" and c["status"] == "True"
                          for c in conditions) else None


class ControllerManager:
    """The controller-manager's part, for the forks' Deployments once `rolling` is on: a
    Deployment whose spec it has not seen gets an available, updated pod (its status)."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.rolling = False
        self.rolled: list[tuple[str, int]] = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if not self.rolling:
                continue
            for key in list(self.api.objects):
                if key[0] != kmock.resource(DEPLOYMENTS) or self.api.objects[key].deleted:
                    continue
                dep = self.api.objects[key].raw
                generation = dep["metadata"].get("generation")
                if "laneway.dev/sandbox" not in (dep["metadata"].get("labels") or {}) or \
                        (dep.get("status") or {}).get("observedGeneration") == generation:
                    continue
                await call(self.api, "PATCH", f"/apis/apps/v1/namespaces/{key[1]}/deployments/"
                           f"{key[2]}/status", {"status": {
                               "observedGeneration": generation, "replicas": 1,
                               "availableReplicas": 1, "updatedReplicas": 1,
                               "readyReplicas": 1}}, "application/merge-patch+json")
                self.rolled.append((key[2], generation))


async def test_a_sandbox_is_forked_routed_made_ready_updated_and_deleted_over_http(
        cluster: tuple[ApiServer, Operator, ControllerManager]) -> None:
    api, operator, controller = cluster
    team_routes = [r["name"] for r in
                   api.get_object(VIRTUAL_SERVICES, "shop", "pricing")["spec"]["http"]]
    created = await call(api, "POST", "/apis/laneway.dev/v1alpha1/namespaces/shop/sandboxes",
                         SANDBOX)
    uid = created["metadata"]["uid"]

    async def forked() -> dict[str, Any] | None:
        return api.get_object(DEPLOYMENTS, "shop", "pricing-lw-sb-a")

    try:
        fork = await eventually("the fork Deployment", forked)
    except AssertionError:
        raise AssertionError(operator.output()) from None
    assert fork["metadata"]["ownerReferences"][0]["uid"] == uid
    container = fork["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/pricing:pr-1"
    assert {"name": "DISCOUNT", "value": "20"} in container["env"]
    fork_service = await eventually("the fork Service", lambda: asyncio.sleep(
        0, api.get_object(SERVICES, "shop", "pricing-lw-sb-a")))
    assert fork_service["metadata"]["ownerReferences"][0]["uid"] == uid

    async def routed() -> dict[str, Any] | None:
        vs = api.get_object(VIRTUAL_SERVICES, "shop", "pricing")
        names = [r["name"] for r in vs["spec"]["http"]]
        return vs if any(n.startswith("laneway-") and "sb-a" in n for n in names) else None

    vs = await eventually("the sandbox's route in the team's VirtualService", routed)
    names = [r["name"] for r in vs["spec"]["http"]]
    assert [n for n in names if n in team_routes] == team_routes  # the team's, in order
    sandbox = await eventually("a routing key in the status", lambda: asyncio.sleep(
        0, (s := api.get_object(SANDBOXES, "shop", "sb-a")) and
        (s.get("status") or {}).get("routingKey") and s))
    key = sandbox["status"]["routingKey"]
    assert sandbox["status"]["baggage"] == f"laneway-key={key}"
    assert FINALIZER in sandbox["metadata"]["finalizers"]
    assert ready(api) is None  # no pod serves the fork yet

    controller.rolling = True
    await eventually("Ready", lambda: asyncio.sleep(0, ready(api)))

    # An update replaces the fork (a new image), and Ready waits for its rollout.
    update = {"spec": {"forks": [{**SANDBOX["spec"]["forks"][0],  # type: ignore[index]
                                  "image": "registry.example/pricing:pr-2"}]}}
    await call(api, "PATCH", "/apis/laneway.dev/v1alpha1/namespaces/shop/sandboxes/sb-a",
               update, "application/merge-patch+json")

    async def replaced() -> bool:
        dep = await forked()
        return bool(dep and dep["spec"]["template"]["spec"]["containers"][0]["image"]
                    == "registry.example/pricing:pr-2")

    await eventually("the fork replaced", replaced)
    await eventually("Ready again", lambda: asyncio.sleep(0, ready(api) if any(
        g > 1 for _, g in controller.rolled) else None))
    assert api.get_object(SANDBOXES, "shop", "sb-a")["status"]["routingKey"] == key

    # Deleting runs the finalizer: what the sandbox made goes, the team's routes stay.
    await call(api, "DELETE", "/apis/laneway.dev/v1alpha1/namespaces/shop/sandboxes/sb-a")
    await eventually("the sandbox gone", lambda: asyncio.sleep(
        0, api.get_object(SANDBOXES, "shop", "sb-a") is None))
    assert await forked() is None
    assert api.get_object(SERVICES, "shop", "pricing-lw-sb-a") is None
    vs = api.get_object(VIRTUAL_SERVICES, "shop", "pricing")
    assert [r["name"] for r in vs["spec"]["http"]] == team_routes
    assert api.get_object(DEPLOYMENTS, "shop", "pricing") is not None  # the baseline stays


async def test_an_operator_restarted_mid_way_converges_and_a_route_group_routes(
        cluster: tuple[ApiServer, Operator, ControllerManager]) -> None:
    api, operator, controller = cluster
    controller.rolling = True
    await operator.stop()
    # Made while no operator runs: nothing happens yet (and nothing is lost).
    labelled = {**SANDBOX, "spec": {**SANDBOX["spec"],  # type: ignore[dict-item]
                                    "labels": {"team": "pay"}}}
    await call(api, "POST", "/apis/laneway.dev/v1alpha1/namespaces/shop/sandboxes", labelled)
    await call(api, "POST", "/apis/laneway.dev/v1alpha1/namespaces/shop/routegroups", {
        "apiVersion": "laneway.dev/v1alpha1", "kind": "RouteGroup",
        "metadata": {"name": "pay", "namespace": "shop"},
        "spec": {"match": {"labels": {"team": "pay"}}}})
    await asyncio.sleep(0.5)
    assert api.get_object(DEPLOYMENTS, "shop", "pricing-lw-sb-a") is None
    # Started again, it finds both as they are (level-triggered) and converges.
    await operator.start()
    await eventually("Ready after the restart", lambda: asyncio.sleep(0, ready(api)))

    async def grouped() -> dict[str, Any] | None:
        group = api.get_object("laneway.dev/v1alpha1/routegroups", "shop", "pay")
        status = (group or {}).get("status") or {}
        return status if status.get("sandboxes") == ["sb-a"] else None

    status = await eventually("the route group's members", grouped)
    assert status["routingKey"] != api.get_object(SANDBOXES, "shop", "sb-a")["status"][
        "routingKey"]
    routes = [r["name"] for r in api.get_object(VIRTUAL_SERVICES, "shop", "pricing")["spec"][
        "http"]]
    assert routes == ["laneway-rg-pay", "laneway-sb-a", "canary-by-header", "default"]
    # Stopped again mid-way through a deletion: the finalizer holds the Sandbox until an
    # operator has removed what it made.
    await operator.stop()
    await call(api, "DELETE", "/apis/laneway.dev/v1alpha1/namespaces/shop/sandboxes/sb-a")
    held = api.get_object(SANDBOXES, "shop", "sb-a")
    assert held is not None
    assert held["metadata"]["deletionTimestamp"]
    await operator.start()
    await eventually("the sandbox gone", lambda: asyncio.sleep(
        0, api.get_object(SANDBOXES, "shop", "sb-a") is None))
    await eventually("the group's routes gone with its last member", lambda: asyncio.sleep(
        0, [r["name"] for r in api.get_object(VIRTUAL_SERVICES, "shop", "pricing")["spec"][
            "http"]] == ["canary-by-header", "default"]), timeout=30)  # the group's 10 s timer


async def test_router_mode_feeds_the_sidecars_their_table_behind_token_reviews(
        tmp_path: Path) -> None:
    from tests.e2e.conftest import free_ports

    (port,) = free_ports(1)
    feed = f"http://127.0.0.1:{port}/v1/routes"
    async with ApiServer(tokens={"sidecar-token": ["laneway-routes"],
                                 "other-audience": ["api"]}) as api, kmock.Server(api) as srv:
        load_api(api)
        controller = ControllerManager(api)
        controller.rolling = True
        task = asyncio.get_running_loop().create_task(controller.run())
        operator = Operator(str(srv.url).rstrip("/"), tmp_path, {
            "LANEWAY_ROUTING_MODE": "router", "LANEWAY_API_ADDRESS": f"127.0.0.1:{port}",
            "LANEWAY_ROUTER_IMAGE": "registry.example/laneway:test",
            "POD_NAMESPACE": "laneway-system"})
        await operator.start()
        try:
            created = await call(api, "POST",
                                 "/apis/laneway.dev/v1alpha1/namespaces/shop/sandboxes", SANDBOX)
            await eventually("Ready", lambda: asyncio.sleep(0, ready(api)))
            key = api.get_object(SANDBOXES, "shop", "sb-a")["status"]["routingKey"]
            assert created["metadata"]["uid"]
            # The baseline behind the router: its sidecar added beside the team's containers.
            base = api.get_object(DEPLOYMENTS, "shop", "pricing")
            containers = base["spec"]["template"]["spec"]["containers"]
            assert [c["name"] for c in containers][:2] == ["pricing", "sidecar-metrics"]
            assert containers[-1]["image"] == "registry.example/laneway:test"
            assert api.get_object(VIRTUAL_SERVICES, "shop", "pricing")["spec"]["http"][0][
                "name"] == "canary-by-header"  # no Istio routes in router mode

            async def fed(token: str) -> tuple[int, str]:
                async with aiohttp.ClientSession() as session, session.get(
                        feed, headers={"authorization": f"Bearer {token}"}) as resp:
                    return resp.status, await resp.text()

            try:
                status, _ = await eventually("the fork's key on the feed", lambda: _keyed(
                    fed("sidecar-token"), key))
            except AssertionError:
                raise AssertionError(f"{key}: {_last_answer}; services: "
                                     f"{api.get_object(SERVICES, 'shop', 'pricing')}") from None
            assert status == 200
            assert (await fed("other-audience"))[0] == 401  # a token for another audience
            assert (await fed("made-up"))[0] == 401
            await call(api, "DELETE",
                       "/apis/laneway.dev/v1alpha1/namespaces/shop/sandboxes/sb-a")
            await eventually("the key gone from the feed", lambda: _keyed(
                fed("sidecar-token"), key, present=False))
        finally:
            task.cancel()
            await operator.stop()
            print(operator.output())  # shown when the test fails


_last_answer: list[Any] = []


async def _keyed(answer: Awaitable[tuple[int, str]], key: str,
                 present: bool = True) -> tuple[int, str] | None:
    status, text = await answer
    _last_answer[:] = [status, text]
    return (status, text) if status == 200 and (key in text) == present else None


async def test_an_api_error_is_retried_with_the_configured_backoff(
        cluster: tuple[ApiServer, Operator, ControllerManager]) -> None:
    api, operator, controller = cluster
    controller.rolling = True
    api.fail_next[("POST", "deployments")] = 1  # the fork's first create fails
    await call(api, "POST", "/apis/laneway.dev/v1alpha1/namespaces/shop/sandboxes", SANDBOX)
    await eventually("the fork after the retry", lambda: asyncio.sleep(
        0, api.get_object(DEPLOYMENTS, "shop", "pricing-lw-sb-a")), timeout=40)
    assert api.failed == [("POST", "deployments")]
    await eventually("Ready", lambda: asyncio.sleep(0, ready(api)))
    # Retried after laneway's delay (10 s), not kopf's default minute, nor in a tight loop.
    creates = [w for w in api.writes if w[:2] == ("create", "deployments")]
    assert len(creates) == 1
    failures = [line for line in operator.output(10**7).splitlines()
                if "'sandbox_changed' failed" in line]
    assert failures, operator.output()
    assert all("will try again in 10.0 seconds: (500)" in line for line in failures)


@pytest.mark.timeout(120)
async def test_a_sandbox_past_its_ttl_is_deleted_with_what_it_made(
        cluster: tuple[ApiServer, Operator, ControllerManager]) -> None:
    api, operator, controller = cluster
    controller.rolling = True
    short = {**SANDBOX, "metadata": {"name": "sb-t", "namespace": "shop"},
             "spec": {**SANDBOX["spec"], "ttl": "10s"}}
    await call(api, "POST", "/apis/laneway.dev/v1alpha1/namespaces/shop/sandboxes", short)
    await eventually("the fork", lambda: asyncio.sleep(
        0, api.get_object(DEPLOYMENTS, "shop", "pricing-lw-sb-t")))
    # The sandbox's timer (every 30 s) finds the TTL passed: the Sandbox is deleted, and the
    # finalizer takes its forks and routes with it.
    await eventually("the expired sandbox gone", lambda: asyncio.sleep(
        0, api.get_object(SANDBOXES, "shop", "sb-t") is None), timeout=60)
    assert api.get_object(DEPLOYMENTS, "shop", "pricing-lw-sb-t") is None
    assert api.get_object(SERVICES, "shop", "pricing-lw-sb-t") is None
    routes = [r["name"] for r in api.get_object(VIRTUAL_SERVICES, "shop", "pricing")["spec"][
        "http"]]
    assert routes == ["canary-by-header", "default"], operator.output()
    assert ("delete", "sandboxes", "shop", "sb-t") in api.writes
