"""The verification loop on a cluster, with everything real but the API server (KMock's
emulator, `tests.k8s.apiserver`): the operator as a process (kopf, the official client, its
laneway API), the router sidecar as a process started from the command line the operator
injected into the baseline Deployment, following the operator's feed and pushing its hop
records back, the "pods" as processes on loopback (the baseline's beside its sidecar, the
fork's at its Service's cluster IP), and the real CLI selecting the cluster with a context.

Only what a pod network provides is substituted, as in `tests/e2e/test_k8s_router_mode.py`:
the operator's address (a cluster DNS name), listen addresses, and the projected token file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest

from tests.e2e.conftest import LANEWAY, free_ports
from tests.e2e.test_k8s_router_mode import (
    CHAIN,
    baseline,
    pod_env,
    processes,
    sidecar_command,
)
from tests.integration.test_operator_http import (
    DEPLOYMENTS,
    SANDBOXES,
    SERVICES,
    ControllerManager,
    Operator,
    eventually,
    load_api,
)
from tests.k8s.apiserver import ApiServer

pytestmark = pytest.mark.timeout(180)

SIDECAR_TOKEN = "projected-sidecar-token"
ALICE = "alice-token"  # may do anything in shop
BOB = "bob-token"  # may read, not create, in shop


class Cluster:
    def __init__(self, api: ApiServer, operator: Operator, api_url: str, home: Path) -> None:
        self.api = api
        self.operator = operator
        self.api_url = api_url
        self.env = {**os.environ, "LANEWAY_CONFIG_DIR": str(home / "config"),
                    "NO_COLOR": "1", "COLUMNS": "200"}
        self.env.pop("LANEWAY_CONTEXT", None)
        self.home = home

    async def laneway(self, *args: str, code: int | None = 0,
                      timeout: float = 90) -> subprocess.CompletedProcess[str]:
        proc = await asyncio.create_subprocess_exec(
            LANEWAY, *args, cwd=self.home, env=self.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        done = subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(),
                                           err.decode())
        if code is not None:
            assert done.returncode == code, f"{args}: exit {done.returncode}\n{done.stdout}\n" \
                f"{done.stderr}\n{self.operator.output()}"
        return done


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    app_port, service_port, api_port = free_ports(3)
    async with ApiServer(
            tokens={SIDECAR_TOKEN: ["laneway-routes"], ALICE: [], BOB: []},
            users={ALICE: "alice", BOB: "bob"},
            denied={("bob", "create", "shop"), ("bob", "update", "shop")},
            service_ips="127.1.") as api, kmock.Server(api) as server:
        load_api(api, baseline(app_port, service_port))
        operator = Operator(str(server.url).rstrip("/"), tmp_path, {
            "LANEWAY_ROUTING_MODE": "router", "LANEWAY_API_ADDRESS": f"127.0.0.1:{api_port}",
            "LANEWAY_ROUTER_IMAGE": "registry.example/laneway:test",
            "POD_NAMESPACE": "laneway-system"})
        controller = ControllerManager(api)
        controller.rolling = True
        task = asyncio.get_running_loop().create_task(controller.run())
        await operator.start()
        url = f"http://127.0.0.1:{api_port}"

        async def healthy() -> bool:
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{url}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        try:
            await eventually("the operator's API", healthy)
            yield Cluster(api, operator, url, tmp_path)
        finally:
            task.cancel()
            await operator.stop()
            print(operator.output())  # shown when the test fails


def sidecar_argv(deployment: dict[str, Any], operator: str, listen_port: int,
                 token_file: Path) -> list[str]:
    """The injected sidecar's command line, the pod network's parts put on loopback."""
    return [*sidecar_command(deployment, f"{operator}/v1/routes", listen_port, token_file,
                             f"{operator}/v1/hops"), "--name", "pricing-7d9f-abcde"]


@contextlib.asynccontextmanager
async def running_pods(cluster: Cluster, sandbox: str, key: str) -> AsyncIterator[
        tuple[str, subprocess.Popen[bytes]]]:
    """The "pods" of the baseline (the application and the sidecar the operator injected)
    and of the sandbox's fork (at its Service's cluster IP); yields the sidecar's URL (where
    the pricing Service's traffic arrives) once it routes the key to the fork."""
    api = cluster.api
    injected = api.get_object(DEPLOYMENTS, "shop", "pricing")
    fork = api.get_object(DEPLOYMENTS, "shop", f"pricing-lw-{sandbox}")
    fork_service = api.get_object(SERVICES, "shop", f"pricing-lw-{sandbox}")
    fork_ip = fork_service["spec"]["clusterIP"]
    service_port = fork_service["spec"]["ports"][0]["port"]
    app_port = injected["spec"]["template"]["spec"]["containers"][0]["ports"][0][
        "containerPort"]
    token_file = cluster.home / "token"
    token_file.write_text(SIDECAR_TOKEN + "\n")
    (router_port,) = free_ports(1)
    logs = cluster.home / f"pods-{sandbox}"
    logs.mkdir()
    with processes(logs) as start:
        start([sys.executable, str(CHAIN)], pod_env(
            injected["spec"]["template"]["spec"]["containers"][0], PORT=str(app_port)))
        start([sys.executable, str(CHAIN)], pod_env(
            fork["spec"]["template"]["spec"]["containers"][0], PORT=str(service_port),
            HOST=fork_ip))
        router = start(sidecar_argv(injected, cluster.api_url, router_port, token_file))
        url = f"http://127.0.0.1:{router_port}/"

        async def routed() -> bool:
            try:
                async with httpx.AsyncClient() as http:
                    resp = await http.get(url, headers={"baggage": f"laneway-key={key}"})
                return resp.status_code == 200 and resp.json()["version"] == "fork"
            except httpx.TransportError:
                return False

        await eventually("the sidecar routing the key to the fork", routed, timeout=30)
        yield url, router


SANDBOX_FILE = """\
name: sb-a
labels: {team: pay}
ttl: 2h
forks:
  - workload: pricing
    image: registry.example/pricing:pr-7
    env: {VERSION: fork}
"""


async def test_run_hops_and_leaks_against_a_cluster_through_a_context(
        cluster: Cluster) -> None:
    api = cluster.api
    await cluster.laneway("context", "add", "shop", "--k8s", "--url", cluster.api_url,
                          "--namespace", "shop", "--token", ALICE)
    (cluster.home / "sandbox.yaml").write_text(SANDBOX_FILE)
    applied = await cluster.laneway("--context", "shop", "sandbox", "apply", "-f",
                                    "sandbox.yaml", "--wait", "-o", "json")
    view = json.loads(applied.stdout)
    key = view["routingKey"]
    assert view["status"]["phase"] == "ready"
    cr = api.get_object(SANDBOXES, "shop", "sb-a")
    assert cr["status"]["routingKey"] == key  # the resource is the truth
    assert cr["spec"]["forks"][0]["env"] == [{"name": "VERSION", "value": "fork"}]

    async with running_pods(cluster, "sb-a", key) as (url, router):
        # A test that calls the service with a client that knows nothing of laneway: the
        # run's HTTP_PROXY adds the key; the sidecar's hops reach the operator in batches.
        test = (f"import urllib.request, json; body = json.load(urllib.request.urlopen("
                f"'{url}')); print('served by', body['version']); "
                "assert body['version'] == 'fork'")
        ran = await cluster.laneway("--context", "shop", "run", "--sandbox", "sb-a", "-o",
                                    "json", "--", sys.executable, "-c", test)
        report = json.loads(ran.stdout)
        assert report["verdict"] == "passed", report
        assert report["forks_reached"] == {"pricing@sb-a": 1}
        assert report["fork_responses"]["pricing@sb-a"] == {"2xx": 1}
        assert report["hops"] >= 1
        assert report["proxied_requests"] == 1
        assert "served by fork" in ran.stderr  # the command's own output, as it ran
        assert report["output_tail"][-1] == "served by fork"

        # Its report is the operator's: listed and read back like a local run's.
        listed = json.loads((await cluster.laneway(
            "--context", "shop", "runs", "list", "-o", "json")).stdout)
        assert [r["id"] for r in listed] == [report["id"]]
        md = await cluster.laneway("--context", "shop", "runs", "get", report["id"], "-o",
                                   "md")
        assert "pricing@sb-a" in md.stdout

        # A test that passes without calling the fork proves nothing: vacuous, exit 3.
        vacuous = await cluster.laneway("--context", "shop", "run", "--sandbox", "sb-a",
                                        "--", sys.executable, "-c", "pass", code=3)
        assert "vacuous" in vacuous.stdout
        assert "never reached pricing@sb-a" in vacuous.stdout
        # A failing test fails with its own exit code, whatever it reached.
        failing = (f"import urllib.request; urllib.request.urlopen('{url}'); "
                   "raise SystemExit(5)")
        await cluster.laneway("--context", "shop", "run", "--sandbox", "sb-a", "--",
                              sys.executable, "-c", failing, code=5)

        # Hops and the path, from the sidecar's records.
        hops = json.loads((await cluster.laneway("--context", "shop", "hops", "--sandbox",
                                                 "sb-a", "-o", "json")).stdout)
        assert hops
        assert all(h["routing_key"] == key for h in hops)
        # (keyed requests made before the sidecar had the fork's route went to the baseline)
        assert "sb-a" in {h["destination"] for h in hops}
        # The run's requests carry a trace (its proxy starts one): its path, by a prefix.
        trace = next(h["trace_id"] for h in hops if h["trace_id"])
        traced = await cluster.laneway("--context", "shop", "trace", trace[:12])
        assert "pricing.shop@sb-a" in traced.stdout, traced.stdout
        await cluster.laneway("--context", "shop", "leaks")  # none: the test kept its key

        status = json.loads((await cluster.laneway("--context", "shop", "status", "-o",
                                                   "json")).stdout)
        assert status["mode"] == "router"
        assert status["routers"]["pricing-7d9f-abcde"]["hops"] >= 3
        assert status["routers"]["pricing-7d9f-abcde"]["dropped"] == 0
        assert [s["name"] for s in status["sandboxes"]] == ["sb-a"]
        assert router.poll() is None

    # RBAC decides, through SubjectAccessReviews: bob may read the namespace, not write it.
    await cluster.laneway("context", "add", "bob", "--k8s", "--url", cluster.api_url,
                          "--namespace", "shop", "--token", BOB)
    listed_by_bob = await cluster.laneway("--context", "bob", "sandbox", "list")
    assert "sb-a" in listed_by_bob.stdout
    refused = await cluster.laneway("--context", "bob", "sandbox", "apply", "-f",
                                    "sandbox.yaml", code=1)
    assert "bob may not update sandboxes in namespace shop" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert any(r["user"] == "bob" and r["resourceAttributes"]["verb"] == "update"
               for r in api.access_reviews)
    await cluster.laneway("context", "add", "nobody", "--k8s", "--url", cluster.api_url,
                          "--token", "made-up")
    unknown = await cluster.laneway("--context", "nobody", "sandbox", "list", code=1)
    assert "does not accept this token" in unknown.stderr

    # Deleting goes through the finalizer: the forks go, the baseline's own containers stay.
    await cluster.laneway("--context", "shop", "sandbox", "delete", "sb-a")
    await eventually("the sandbox gone", lambda: asyncio.sleep(
        0, api.get_object(SANDBOXES, "shop", "sb-a") is None), timeout=30)
    assert api.get_object(DEPLOYMENTS, "shop", "pricing-lw-sb-a") is None
    gone = await cluster.laneway("--context", "shop", "sandbox", "get", "sb-a", code=1)
    assert "sandbox 'sb-a' not found in namespace shop" in gone.stderr


async def test_a_context_names_what_is_wrong(cluster: Cluster) -> None:
    missing = await cluster.laneway("--context", "nowhere", "status", code=1)
    assert "--context nowhere: no such context" in missing.stderr
    bad = await cluster.laneway("context", "add", "x", "--k8s", "--url", "ftp://x",
                                "--token", "t", code=1)
    assert "--url: 'ftp://x' is not an http(s) URL" in bad.stderr
    await cluster.laneway("context", "add", "down", "--k8s", "--url", "http://127.0.0.1:9",
                          "--token", ALICE)
    down = await cluster.laneway("--context", "down", "sandbox", "list", code=1)
    assert "cannot reach the operator of context down" in down.stderr
    # What needs a local environment's processes says what does it on a cluster.
    await cluster.laneway("context", "add", "shop", "--k8s", "--url", cluster.api_url,
                          "--namespace", "shop", "--token", ALICE, "--use")
    logs = await cluster.laneway("logs", "pricing", code=1)
    assert "kubectl logs" in logs.stderr
    down = await cluster.laneway("down", code=1)
    assert "`laneway down` stops a local environment; context shop" in down.stderr
    # A mistake in the file is the API's 422, named by field, and nothing is applied.
    (cluster.home / "twice.yaml").write_text(
        "name: sb-2\nforks:\n  - {workload: pricing, image: p:1}\n"
        "  - {workload: pricing, image: p:2}\n")
    twice = await cluster.laneway("sandbox", "apply", "-f", "twice.yaml", code=1)
    assert "forks[1].workload: pricing is forked by forks[0] already" in twice.stderr
    assert cluster.api.get_object(SANDBOXES, "shop", "sb-2") is None
    listed = await cluster.laneway("context", "list")
    assert "* " in listed.stdout.split("shop")[0].splitlines()[-1] + " "
    mode = os.stat(cluster.home / "config" / "contexts.yaml").st_mode & 0o777
    assert mode == 0o600  # it holds tokens


async def mcp_call(client: Any, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, f"{tool}: {text}"
    return json.loads(text)


async def test_the_mcp_tools_against_a_cluster(cluster: Cluster) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    await cluster.laneway("context", "add", "shop", "--k8s", "--url", cluster.api_url,
                          "--namespace", "shop", "--token", ALICE)
    params = StdioServerParameters(command=LANEWAY, args=["--context", "shop", "mcp"],
                                   cwd=str(cluster.home), env=cluster.env)
    async with Client(params) as client:
        services = await mcp_call(client, "list_services")
        assert {s["name"] for s in services["services"]} == {"pricing"}
        refused = await client.call_tool("apply_sandbox", {
            "name": "sb-m", "forks": [{"service": "pricing", "run": "python app.py"}]})
        assert refused.is_error  # a local fork's shape, said why
        assert "workload" in " ".join(getattr(b, "text", "") for b in refused.content)
        sandbox = await mcp_call(client, "apply_sandbox", name="sb-m", forks=[{
            "workload": "pricing", "image": "registry.example/pricing:pr-8",
            "env": {"VERSION": "fork"}}])
        assert sandbox["phase"] == "ready", sandbox
        key = sandbox["routing_key"]
        listed = await mcp_call(client, "list_sandboxes")
        assert [s["name"] for s in listed["sandboxes"]] == ["sb-m"]
        assert (await mcp_call(client, "get_sandbox", name="sb-m"))["routing_key"] == key

        async with running_pods(cluster, "sb-m", key) as (url, _router):
            test = (f"import urllib.request, json; body = json.load(urllib.request.urlopen("
                    f"'{url}')); assert body['version'] == 'fork', body")
            report = await mcp_call(client, "run_tests", sandbox="sb-m",
                                    command=[sys.executable, "-c", test])
            assert report["verdict"] == "passed", report
            assert report["forks_reached"] == {"pricing@sb-m": 1}
            again = await mcp_call(client, "get_run", run_id=report["id"])
            assert again["verdict"] == "passed"

            sent = await mcp_call(client, "send_request", method="GET", url=url,
                                  sandbox="sb-m")
            assert sent["served_by"] == "pricing.shop@sb-m"
            trace = await mcp_call(client, "get_trace", trace_id=sent["trace_id"])
            assert "sb-m" in trace["path"]
            assert (await mcp_call(client, "list_leaks", sandbox="sb-m"))["leaks"] == []
        deleted = await mcp_call(client, "delete_sandbox", name="sb-m")
        assert deleted["deleted"] == "sb-m"
    await eventually("the sandbox gone", lambda: asyncio.sleep(
        0, cluster.api.get_object(SANDBOXES, "shop", "sb-m") is None), timeout=30)
