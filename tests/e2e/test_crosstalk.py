"""Many sandboxes and a route group over a 3-hop chain, concurrent requests mixing every key:
each response must come from exactly the versions its key selects (zero cross-talk)."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.e2e.conftest import Project
from tests.e2e.test_cli import versions

SANDBOXES = 21
SERVICES = ["a", "b", "c"]


def expected_chain(forks: dict[str, str]) -> list[str]:
    return [f"{s}:{forks.get(s, 'baseline')}" for s in SERVICES]


async def test_no_cross_talk_under_concurrency(project: Project) -> None:
    def apply(i: int) -> tuple[str, str]:
        service = SERVICES[i % 3]
        project.write(f"s{i}.yaml", f"name: s{i}\nlabels: {{batch: b{i // 2}}}\nforks:\n"
                      f"  - service: {service}\n    env: {{VERSION: s{i}}}\n")
        view = project.json("sandbox", "apply", "-f", f"s{i}.yaml", "--wait")
        assert view["status"]["ready"], view["status"]
        return view["routingKey"], service

    with ThreadPoolExecutor(max_workers=6) as pool:
        applied = list(pool.map(apply, range(SANDBOXES)))

    expectations: dict[str | None, list[str]] = {None: expected_chain({})}
    for i, (key, service) in enumerate(applied):
        expectations[key] = expected_chain({service: f"s{i}"})
    # Sandboxes 0 (forks a) and 1 (forks b) share the label batch=b0.
    project.write("group.yaml", "name: batch0\nmatch:\n  labels: {batch: b0}\n")
    group = project.json("routegroup", "apply", "-f", "group.yaml")
    assert group["status"]["sandboxes"] == ["s0", "s1"]
    expectations[group["routingKey"]] = expected_chain({"a": "s0", "b": "s1"})
    for i in (18, 19, 20):  # deleted: their keys fall back to the baseline
        project.run("sandbox", "delete", f"s{i}")
        expectations[applied[i][0]] = expected_chain({})

    keys = list(expectations)
    plan = [random.Random(7).choice(keys) for _ in range(600)]
    failures: list[str] = []
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=project.url("a"), limits=limits,
                                 timeout=30) as client:
        semaphore = asyncio.Semaphore(32)

        async def one(key: str | None) -> None:
            headers = {"baggage": f"other=1,laneway-key={key}"} if key else {}
            async with semaphore:
                resp = await client.get("/", headers=headers)
            got = versions(resp.json()) if resp.status_code == 200 else [str(resp.status_code)]
            if got != expectations[key]:
                failures.append(f"key {key}: expected {expectations[key]}, got {got}")

        await asyncio.gather(*(one(k) for k in plan))
    assert failures == []
    hops = project.json("hops", "--limit", "5000")
    assert len(hops) >= 1800  # three hops per request, every one recorded
