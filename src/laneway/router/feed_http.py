"""The routes feed over HTTP: what a router outside the daemon (a sidecar, or `python -m
laneway.router`) follows. Long-polls the control plane's `/v1/routes`; the router keeps serving
its last table whenever this fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from laneway.core.feed import FeedUpdate, update_from_json

__all__ = ["HttpRoutesFeed"]


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
