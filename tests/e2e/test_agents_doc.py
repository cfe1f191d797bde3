"""docs/agents.md stays true: every `mcp` block of it is called, in order, through the real MCP
client SDK against the demo shop, and what the page says about the answers is checked."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.e2e.conftest import LANEWAY, Project
from tests.e2e.test_shop import shop  # noqa: F401  (the fixture)

DOC = Path(__file__).parents[2] / "docs" / "agents.md"
BLOCK = re.compile(r"```mcp\n(.*?)```", re.DOTALL)


def examples(ports: dict[str, int]) -> list[dict[str, Any]]:
    text = DOC.read_text()
    # The page uses the shop's own ports; the test's copy of the shop runs on free ones.
    for old, service in (("19401", "web"), ("19402", "orders"), ("19403", "pricing"),
                         ("19404", "currency")):
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{ports[service]}")
    text = text.replace('"command": "python ', f'"command": "{sys.executable} ')
    return [json.loads(block) for block in BLOCK.findall(text)]


async def test_every_example_of_the_agents_page_works(shop: Project) -> None:  # noqa: F811
    calls = examples(shop.ports)
    assert [c["tool"] for c in calls] == [
        "list_services", "apply_sandbox", "send_request", "run_tests", "list_leaks",
        "get_logs", "delete_sandbox"]
    results: dict[str, Any] = {}
    params = StdioServerParameters(command=LANEWAY, args=["mcp"], cwd=str(shop.root))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for call in calls:
            result = await session.call_tool(call["tool"], call["arguments"])
            text = " ".join(getattr(block, "text", "") for block in result.content)
            assert not result.is_error, f"{call['tool']}: {text}"
            results[call["tool"]] = result.structured_content or json.loads(text)
    assert results["apply_sandbox"]["phase"] == "ready"
    assert "pricing@promo" in results["send_request"]["path"]
    report = results["run_tests"]
    assert report["verdict"] == "passed", report
    assert report["diff"]["findings"]
    assert {f["risk"] for f in report["diff"]["findings"]} == {"yellow"}
    # The legacy quote loses the key in every trace that asks for it: the run's own request,
    # and (when its hops have arrived by then) the diff's keyed replay of it.
    leaks = results["list_leaks"]["leaks"]
    assert leaks
    assert {(leak["service"], leak["lost_at"], leak["serving"]) for leak in leaks} == {
        ("orders", "pricing", "GET /quote-v1?item=mug")}
