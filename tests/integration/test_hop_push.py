"""A router sidecar's hop records on their way to the operator (`HttpHopPusher`), against a real
HTTP server on loopback that goes away and comes back: batches, bounds, drops counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from laneway.core.hops import Hop, HopRow
from laneway.router.feed_http import HttpHopPusher
from tests.e2e.conftest import free_ports


def hop(n: int) -> HopRow:
    """A record as the router hands it to its sink: a row."""
    return Hop(at=1_800_000_000.0 + n, trace_id=f"{n:032x}", parent_id="", service="pricing.shop",
               routing_key="k3y0000000ab", destination="sb-a", fork="pricing-lw-sb-a",
               status=200, duration_ms=1.0, method="GET", path=f"/{n}").to_row()


class Operator:
    """Takes `POST /v1/hops` and keeps what it got."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.batches: list[dict[str, Any]] = []
        self.headers: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.hold: asyncio.Event | None = None  # set: the answer waits for it
        self.holding = asyncio.Event()  # a request is waiting for `hold`

    async def start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.add(writer)
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:"))
                    self.batches.append(json.loads(await reader.readexactly(length)))
                    self.headers.append(head)
                    if self.hold is not None:
                        self.holding.set()
                        await self.hold.wait()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: 2\r\n\r\n{}")
                    await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in self.writers:  # kept-alive connections go too: the operator is away
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    def received(self) -> list[str]:
        return [Hop.from_row(batch["fields"], row).path for batch in self.batches
                for row in batch["rows"]]


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def test_hops_go_in_batches_wait_while_the_operator_is_away_and_drops_are_counted(
) -> None:
    (port,) = free_ports(1)
    operator = Operator(port)
    await operator.start()
    pusher = HttpHopPusher(f"http://127.0.0.1:{port}/v1/hops", "sidecar-token",
                           router="pricing-abc", capacity=10, batch=4, interval=0.05)
    task = asyncio.get_running_loop().create_task(pusher.run())
    try:
        pusher.add([hop(n) for n in range(3)])
        await until(lambda: pusher.sent == 3)  # answered, and taken off the buffer
        assert operator.batches[0]["router"] == "pricing-abc"
        assert operator.batches[0]["dropped"] == 0
        assert b"authorization: Bearer sidecar-token" in operator.headers[0]

        # The operator goes away: records wait, bounded, the oldest dropped and counted.
        await operator.stop()
        pusher.add([hop(n) for n in range(3, 18)])  # 15 more, room for 10
        assert pusher.dropped == 5
        await asyncio.sleep(0.3)  # a few failed sends: nothing lost beyond the bound
        assert operator.received() == [f"/{n}" for n in range(3)]

        # Back: what waited arrives, in order, in batches of at most 4, with the drop count.
        operator.batches.clear()
        await operator.start()
        await until(lambda: len(operator.received()) == 10)
        assert operator.received() == [f"/{n}" for n in range(8, 18)]
        assert max(len(b["rows"]) for b in operator.batches) <= 4
        assert {b["dropped"] for b in operator.batches} == {5}
        assert pusher.sent == 13
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pusher.aclose()
        await operator.stop()


async def test_records_let_go_while_their_batch_is_in_flight_are_not_lost_when_it_arrives(
) -> None:
    """The buffer is full while a batch is on its way: it lets go of that batch's records
    first (they are being sent), and once the batch is taken they count as sent, not dropped;
    the newer records are all sent next."""
    (port,) = free_ports(1)
    operator = Operator(port)
    operator.hold = asyncio.Event()
    await operator.start()
    pusher = HttpHopPusher(f"http://127.0.0.1:{port}/v1/hops", router="r", capacity=4,
                           batch=4, interval=0.05)
    task = asyncio.get_running_loop().create_task(pusher.run())
    try:
        pusher.add([hop(n) for n in range(4)])
        await asyncio.wait_for(operator.holding.wait(), 10)  # the batch is in flight
        pusher.add([hop(n) for n in range(4, 7)])  # over capacity: 3 of the batch let go
        assert pusher.dropped == 0
        operator.hold.set()
        await until(lambda: len(operator.received()) == 7)
        assert operator.received() == [f"/{n}" for n in range(7)]
        assert pusher.dropped == 0
        assert pusher.sent == 7
    finally:
        operator.hold.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pusher.aclose()
        await operator.stop()
