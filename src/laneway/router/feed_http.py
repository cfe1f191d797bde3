"""The routes feed over HTTP: what a router outside the daemon (a sidecar, or `python -m
laneway.router`) follows. Long-polls the control plane's `/v1/routes`; the router keeps serving
its last table whenever this fails. And the way back: `HttpHopPusher` sends the router's hop
records to the operator in batches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from pathlib import Path
from typing import Any

import httpx

from laneway.core.feed import FeedUpdate, update_from_json
from laneway.core.hops import HOP_PUSH_INTERVAL_S, ROW_FIELDS, HopRow

__all__ = ["HttpHopPusher", "HttpRoutesFeed"]

log = logging.getLogger(__name__)


class HttpRoutesFeed:
    """`token` is a fixed bearer token (the daemon's read-only routes token); `token_file` is
    read again before every request, as Kubernetes rotates projected ServiceAccount tokens."""

    def __init__(self, url: str, token: str = "", token_file: Path | None = None) -> None:
        self.url = url
        self._token = token
        self._token_file = token_file
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10, read=45))

    def _authorization(self) -> dict[str, str]:
        token = self._token_file.read_text().strip() if self._token_file else self._token
        return {"authorization": f"Bearer {token}"} if token else {}

    async def next_update(self, since: int | None, timeout: float) -> FeedUpdate | None:
        params: dict[str, Any] = {"wait": min(timeout, 30)}
        if since is not None:
            params["since"] = since
        resp = await self._http.get(self.url, params=params, headers=self._authorization())
        resp.raise_for_status()
        return update_from_json(resp.json())

    async def aclose(self) -> None:
        await self._http.aclose()


class HttpHopPusher:
    """A router sidecar's hop records, sent to the operator (`POST /v1/hops`) in batches.

    `add` is the router's hop sink: an append to a bounded buffer, nothing else, so traffic
    never waits for the operator. Every `interval` seconds (when there is something to send) up
    to `batch` records go in one request (500: encoding one costs the event loop ~2 ms; a
    backlog goes as several requests, the loop serving traffic between them); when the
    operator is away they stay in the buffer,
    the oldest dropped beyond `capacity` and counted (`dropped`, sent with every batch, so the
    operator's status says what it never got), and sending is retried with a growing delay.
    """

    def __init__(self, url: str, token: str = "", token_file: Path | None = None, *,
                 router: str = "", capacity: int = 50_000, batch: int = 500,
                 interval: float = HOP_PUSH_INTERVAL_S) -> None:
        self.url = url
        self.router = router
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self.dropped = 0
        self.sent = 0
        self._buffer: deque[HopRow] = deque()
        self._token = token
        self._token_file = token_file
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self._failing = False
        self._in_flight = 0  # records of the batch being sent still in the buffer's front
        self._dropped_in_flight = 0  # records of that batch the buffer let go meanwhile

    def add(self, rows: list[HopRow]) -> None:
        buffer = self._buffer
        buffer.extend(rows)
        excess = len(buffer) - self.capacity
        if excess > 0:
            for _ in range(excess):
                buffer.popleft()
            # The oldest go first: those of a batch in flight are lost only if it fails.
            flying = min(excess, self._in_flight)
            self._in_flight -= flying
            self._dropped_in_flight += flying
            self.dropped += excess - flying

    def _authorization(self) -> dict[str, str]:
        token = self._token_file.read_text().strip() if self._token_file else self._token
        return {"authorization": f"Bearer {token}"} if token else {}

    async def push(self) -> bool:
        """Send one batch; whether it was taken (nothing to send counts as taken)."""
        if not self._buffer:
            return True
        count = min(len(self._buffer), self.batch)
        batch = [self._buffer[i] for i in range(count)]
        body = json.dumps({"router": self.router, "dropped": self.dropped,
                           "fields": ROW_FIELDS, "rows": batch})
        self._in_flight, self._dropped_in_flight = count, 0
        try:
            resp = await self._http.post(self.url, content=body, headers={
                **self._authorization(), "content-type": "application/json"})
            resp.raise_for_status()
        except (httpx.HTTPError, OSError) as exc:
            # What the buffer let go of this batch meanwhile is lost after all.
            self.dropped += self._dropped_in_flight
            self._in_flight = self._dropped_in_flight = 0
            if not self._failing:
                log.warning("hop records not sent to %s (kept, %d waiting): %s", self.url,
                            len(self._buffer), exc)
            self._failing = True
            return False
        if self._failing:
            log.warning("hop records sent to %s again", self.url)
        self._failing = False
        # Sent: what is left of the batch at the buffer's front goes (the buffer may have let
        # go of some of it while the request was in flight).
        for _ in range(self._in_flight):
            self._buffer.popleft()
        self._in_flight = self._dropped_in_flight = 0
        self.sent += count
        return True

    async def run(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            ok = await self.push()
            while ok and len(self._buffer) >= self.batch:  # a backlog: send it now
                ok = await self.push()
            delay = self.interval if ok else min(delay * 2, 30.0)

    async def aclose(self, timeout: float = 2.0) -> None:
        """Send what is left (for at most `timeout` seconds), then close."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._buffer and await self.push():
                    pass
        await self._http.aclose()
