"""The MCP server driven by the official MCP client SDK over stdio, as a coding agent would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.e2e.conftest import CHAIN, LANEWAY, Project, free_ports

TEST_FILE = """
import os, urllib.request

def test_chain_answers():
    body = urllib.request.urlopen(os.environ["LANEWAY_URL_A"]).read().decode()
    assert "error" not in body, body
"""
REQUIRED = {"list_services", "list_sandboxes", "get_sandbox", "apply_sandbox",
            "delete_sandbox", "send_request", "run_tests", "get_logs", "get_trace",
            "list_leaks", "diff_sandbox"}


async def call(client: Client, tool: str, **arguments: Any) -> tuple[bool, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        return True, " ".join(getattr(block, "text", "") for block in result.content)
    if result.structured_content is not None:
        return False, result.structured_content
    return False, json.loads(result.content[0].text)  # type: ignore[union-attr]


async def test_agent_loop_over_stdio(project: Project) -> None:
    project.write("test_chain.py", TEST_FILE)
    params = StdioServerParameters(command=LANEWAY, args=["mcp"], cwd=str(project.root))
    async with Client(params) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) >= REQUIRED
        assert all(len(tool.description or "") > 60 for tool in tools.values())

        error, services = await call(client, "list_services")
        assert not error
        assert {s["name"] for s in services["services"]} == {"a", "b", "c"}

        error, message = await call(client, "apply_sandbox", name="fix",
                                    forks=[{"service": "nope"}])
        assert error
        assert "unknown service 'nope'" in message
        assert "Next: correct the arguments and call apply_sandbox again" in message

        error, message = await call(client, "apply_sandbox", name="crash",
                                    forks=[{"service": "c", "env": {"EXIT_AT_ONCE": "1"}}])
        assert error
        assert "exited with code 3" in message
        assert "cannot load configuration" in message
        assert "call apply_sandbox again" in message
        assert not (await call(client, "delete_sandbox", name="crash"))[0]

        # The agent's own process as the fork: an address, never started or stopped by us.
        (port,) = free_ports(1)
        error, sandbox = await call(client, "apply_sandbox", name="mine",
                                    forks=[{"service": "c", "address": f"127.0.0.1:{port}"}])
        assert not error, sandbox
        assert sandbox["phase"] == "pending"  # not waited for: nothing runs there yet
        assert f"nothing healthy at 127.0.0.1:{port}" in sandbox["message"]
        own = subprocess.Popen([sys.executable, CHAIN], env={
            **os.environ, "PORT": str(port), "VERSION": "mine", "LANEWAY_SERVICE": "c"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                error, sandbox = await call(client, "get_sandbox", name="mine")
                if sandbox["phase"] == "ready":
                    break
                await asyncio.sleep(0.1)
            error, answer = await call(client, "send_request", url=project.url("a") + "/",
                                       sandbox="mine")
            assert answer["path"] == "a → b → c@mine", answer
        finally:
            own.terminate()
            own.wait()
        assert not (await call(client, "delete_sandbox", name="mine"))[0]

        # A fork with a bug: healthy, but it fails every request.
        error, sandbox = await call(client, "apply_sandbox", name="fix",
                                    forks=[{"service": "c", "env": {"FAIL_REQUESTS": "1"}}])
        assert not error, sandbox
        assert sandbox["phase"] == "ready"

        command = f"{sys.executable} -m pytest -q -p no:cacheprovider test_chain.py"
        error, report = await call(client, "run_tests", sandbox="fix", command=command,
                                   cwd=str(project.root))
        assert not error, report
        assert report["verdict"] == "failed"
        assert report["failures"][0]["name"].endswith("test_chain_answers")
        assert any("division by zero" in line for line in report["fork_errors"])

        error, logs = await call(client, "get_logs", sandbox="fix", grep="error", tail=5)
        assert not error
        assert logs["lines"]
        assert all("error" in line.lower() for line in logs["lines"])

        # A key in the agent's own headers is replaced by the sandbox's, not followed by it.
        error, answer = await call(client, "send_request", url=project.url("a") + "/",
                                   sandbox="fix",
                                   headers={"baggage": "a=1,laneway-key=other0000000"})
        assert not error
        assert answer["path"] == "a → b → c@fix"
        assert not any(hop.get("key_conflict") for hop in answer["hops"])
        error, trace = await call(client, "get_trace", trace_id=answer["trace_id"])
        assert trace["path"] == answer["path"]

        # The fix: the same sandbox, the fork without the bug.
        error, sandbox = await call(client, "apply_sandbox", name="fix",
                                    forks=[{"service": "c", "env": {"VERSION": "fixed"}}])
        assert not error
        assert sandbox["phase"] == "ready"
        error, report = await call(client, "run_tests", sandbox="fix", command=command,
                                   cwd=str(project.root))
        assert report["verdict"] == "passed", report
        assert report["forks_reached"]["c@fix"] >= 1

        # What the fix changed in the answers, beyond the tests: the version, and nothing red.
        error, report = await call(client, "run_tests", sandbox="fix", command=command,
                                   cwd=str(project.root), diff=True)
        assert not error, report
        assert [(f["risk"], f["path"], f["sandbox"]) for f in report["diff"]["findings"]] == [
            ("yellow", "$.next.next.version", "fixed")]
        error, message = await call(client, "diff_sandbox", sandbox="fix")
        assert error
        assert "router.capture_services" in message

        error, listed = await call(client, "list_sandboxes")
        assert [s["name"] for s in listed["sandboxes"]] == ["fix"]


async def test_streamable_http_transport(project: Project) -> None:
    (port,) = free_ports(1)
    with subprocess.Popen([LANEWAY, "mcp", "--http", "--port", str(port)], cwd=project.root,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as server:
        try:
            for _ in range(100):  # wait until it listens
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    await writer.wait_closed()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert names >= REQUIRED
                error, services = await call(client, "list_services")
                assert not error
                assert len(services["services"]) == 3
        finally:
            server.terminate()
            server.wait(timeout=10)
