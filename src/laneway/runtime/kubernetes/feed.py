"""The operator's routes feed (router mode): `GET /v1/routes`, the same wire format as the local
control plane's (`core.feed`), for the router sidecars of the whole cluster.

Who may read it is asked of an `Authenticator`: in a cluster, the sidecar's projected
ServiceAccount token (audience `laneway-routes`) checked with a TokenReview and remembered for a
minute; a fixed token where no API server is at hand (tests, a development operator).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from laneway.core.feed import RoutesBroadcaster, update_to_json
from laneway.core.kubernetes.router_mode import TOKEN_AUDIENCE

__all__ = ["Authenticator", "FixedToken", "TokenReviews", "feed_app", "routes_endpoint"]


class Authenticator(Protocol):
    async def allows(self, token: str) -> bool: ...


class FixedToken:
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def allows(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._token)


class TokenReviews:
    """Asks the API server (`review(token, audience) -> bool`, blocking) and remembers answers
    for `ttl` seconds, so a router's long polls cost one TokenReview a minute."""

    def __init__(self, review: Callable[[str, str], bool], ttl: float = 60.0) -> None:
        self._review = review
        self._ttl = ttl
        self._seen: dict[str, tuple[float, bool]] = {}

    async def allows(self, token: str) -> bool:
        now = time.monotonic()
        seen = self._seen.get(token)
        if seen is not None and now - seen[0] < self._ttl:
            return seen[1]
        try:
            allowed = await asyncio.to_thread(self._review, token, TOKEN_AUDIENCE)
        except Exception:  # the API server is away: refuse now, ask again next time
            return False
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[token] = (now, allowed)
        return allowed


def routes_endpoint(feed: RoutesBroadcaster, auth: Authenticator | None) -> Callable[
        [Request], Awaitable[Response]]:
    """`GET /v1/routes`; `auth` None: the caller was checked already (the operator's API)."""

    async def routes(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if auth is not None and (scheme.lower() != "bearer" or not token
                                 or not await auth.allows(token)):
            return JSONResponse({"error": "authorization: send a ServiceAccount token with "
                                          f"audience {TOKEN_AUDIENCE} as Bearer"},
                                status_code=401)
        try:
            since_raw = request.query_params.get("since")
            since = int(since_raw) if since_raw is not None else None
            wait = min(max(float(request.query_params.get("wait", 0)), 0.0), 60.0)
        except ValueError:
            return JSONResponse({"error": "since must be an integer and wait a number of "
                                          "seconds"}, status_code=400)
        update = await feed.next_update(since, wait) if wait else feed.changes_since(since)
        return JSONResponse(update_to_json(update, feed.version))

    return routes


def feed_app(feed: RoutesBroadcaster, auth: Authenticator) -> Starlette:
    """The feed alone (tests, a development operator)."""
    routes = routes_endpoint(feed, auth)

    async def healthz(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/v1/routes", routes), Route("/healthz", healthz)])
