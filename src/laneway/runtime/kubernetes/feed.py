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
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from laneway.core.feed import RoutesBroadcaster, update_to_json
from laneway.core.kubernetes.router_mode import TOKEN_AUDIENCE

__all__ = ["Answers", "Authenticator", "FixedToken", "TokenReviews", "feed_app",
           "routes_endpoint"]


class Authenticator(Protocol):
    async def allows(self, token: str) -> bool: ...


class FixedToken:
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def allows(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._token)


class Answers:
    """What the API server answered (a TokenReview, a SubjectAccessReview), kept for `ttl`
    seconds; the oldest forgotten beyond `size`."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._seen: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> tuple[bool, Any]:
        """(whether an answer is kept, the answer)."""
        seen = self._seen.get(key)
        if seen is None or time.monotonic() - seen[0] > self.ttl:
            return False, None
        return True, seen[1]

    def put(self, key: Any, value: Any) -> None:
        self._seen[key] = (time.monotonic(), value)
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


class TokenReviews:
    """Asks the API server (`review(token, audience) -> bool`, blocking) and remembers answers
    for `ttl` seconds, so a router's long polls cost one TokenReview a minute."""

    def __init__(self, review: Callable[[str, str], bool], ttl: float = 60.0) -> None:
        self._review = review
        self._answers = Answers(ttl)

    async def allows(self, token: str) -> bool:
        found, allowed = self._answers.get(token)
        if found:
            return bool(allowed)
        try:
            allowed = await asyncio.to_thread(self._review, token, TOKEN_AUDIENCE)
        except Exception:  # the API server is away: refuse now, ask again next time
            return False
        self._answers.put(token, allowed)
        return bool(allowed)


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
