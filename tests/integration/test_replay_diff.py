"""Replay and diff through a real router (control/diffs.py): the baseline and forks are real
HTTP servers whose answers carry a timestamp and a random id on every call (noise), and forks
that change nothing else, change a number, or rename a field."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from laneway.control.diffs import replay_diff
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings

Shape = Callable[[str], dict[str, Any]]


def baseline_shape(path: str) -> dict[str, Any]:
    return {"path": path, "price": 12.5, "items": ["a", "b"], "at": time.time(),
            "request_id": str(uuid.uuid4())}


def cheaper(path: str) -> dict[str, Any]:
    answer = baseline_shape(path)
    if path.startswith("/quote"):
        answer["price"] = 10.0
    return answer


def renamed(path: str) -> dict[str, Any]:
    answer = baseline_shape(path)
    if path.startswith("/quote"):
        answer["cost"] = answer.pop("price")
    return answer


async def serve(shape: Shape) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                body = json.dumps(shape(path)).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%b" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def routed() -> AsyncIterator[tuple[int, dict[str, str]]]:
    servers = {name: await serve(shape) for name, shape in
               (("baseline", baseline_shape), ("same", baseline_shape), ("cheaper", cheaper),
                ("renamed", renamed))}
    router = Router(RouterSettings())
    port = await router.listen("api", 0)
    table = RouteTable(version=1, baseline={"api": Upstream("127.0.0.1",
                                                            servers["baseline"][1])})
    keys = {name: f"key{name:0>9}"[-12:] for name in servers if name != "baseline"}
    table.forks["api"] = {key: ForkRoute("api", name, Upstream("127.0.0.1", servers[name][1]),
                                         True, fork=f"api@{name}#1")
                          for name, key in keys.items()}
    router.apply(table)
    yield port, keys
    await router.close()
    for server, _ in servers.values():
        server.close()


def _requests(port: int) -> list[dict[str, Any]]:
    return [{"method": "GET", "url": f"http://127.0.0.1:{port}{path}", "headers": [],
             "body": ""} for path in [f"/quote/{i}" for i in range(15)] + ["/health"] * 5]


async def test_noise_alone_is_neither_red_nor_yellow(routed: tuple[int, dict[str, str]]) -> None:
    port, keys = routed
    report = await replay_diff(_requests(port), keys["same"])
    assert (report["replayed"], report["red"], report["yellow"]) == (20, 0, 0)
    assert {f["path"] for f in report["noise"]} == {"$.at", "$.request_id"}
    assert report["summary"].endswith("no difference beyond the baseline's own noise")


async def test_a_changed_number_is_yellow_only_where_it_changed(
        routed: tuple[int, dict[str, str]]) -> None:
    port, keys = routed
    report = await replay_diff(_requests(port), keys["cheaper"])
    assert [(f["risk"], f["endpoint"], f["path"], f["baseline"], f["sandbox"])
            for f in report["findings"]] == [
        ("yellow", "GET /quote/{id}", "$.price", 12.5, 10.0)]


async def test_a_renamed_field_is_red_on_that_endpoint_and_path(
        routed: tuple[int, dict[str, str]]) -> None:
    port, keys = routed
    report = await replay_diff(_requests(port), keys["renamed"])
    assert [(f["risk"], f["endpoint"], f["path"], f["kind"]) for f in report["findings"]] == [
        ("red", "GET /quote/{id}", "$.price", "missing")]
    assert report["findings"][0]["example"]["url"].endswith("/quote/0")


async def test_writes_are_not_replayed_unless_asked(routed: tuple[int, dict[str, str]]) -> None:
    port, keys = routed
    post = [{"method": "POST", "url": f"http://127.0.0.1:{port}/quote/1", "headers": [],
             "body": "{}"}]
    report = await replay_diff(post, keys["renamed"])
    assert report["replayed"] == 0
    assert list(report["skipped"]) == [
        "POST: not replayed without --unsafe (it would write twice more)"]
    unsafe = await replay_diff(post, keys["renamed"], unsafe=True)
    assert unsafe["red"] == 1
