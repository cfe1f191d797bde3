"""The routes feed over HTTP: what a router outside the daemon (a sidecar, or `python -m
laneway.router`) follows. Long-polls the control plane's `/v1/routes`; the router keeps serving
its last table whenever this fails."""

from __future__ import annotations

from typing import Any

import httpx

from laneway.core.feed import FeedUpdate
from laneway.core.routes import RouteChanges, RouteTable

__all__ = ["HttpRoutesFeed"]


class HttpRoutesFeed:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._http = httpx.AsyncClient(headers={"authorization": f"Bearer {token}"},
                                       timeout=httpx.Timeout(10, read=45))

    async def next_update(self, since: int | None, timeout: float) -> FeedUpdate | None:
        params: dict[str, Any] = {"wait": min(timeout, 30)}
        if since is not None:
            params["since"] = since
        resp = await self._http.get(self.url, params=params)
        resp.raise_for_status()
        data = resp.json()
        if "snapshot" in data:
            return RouteTable.from_json(data["snapshot"])
        changes = [RouteChanges.from_json(c) for c in data.get("changes", [])]
        return changes or None

    async def aclose(self) -> None:
        await self._http.aclose()
