"""The operator's routes feed: who may read it (TokenReview answers remembered for a while, an
API server that fails refuses rather than opens), and bad query parameters answered with 400."""

from __future__ import annotations

import httpx

from laneway.core.feed import RoutesBroadcaster
from laneway.core.routes import RouteTable, Upstream
from laneway.runtime.kubernetes.feed import FixedToken, TokenReviews, feed_app


async def test_token_reviews_are_remembered_and_failures_refuse() -> None:
    asked: list[tuple[str, str]] = []
    down = False

    def review(token: str, audience: str) -> bool:
        asked.append((token, audience))
        if down:
            raise ConnectionError("the API server is away")
        return token == "good"

    reviews = TokenReviews(review, ttl=60.0)
    assert await reviews.allows("good")
    assert await reviews.allows("good")  # remembered: one TokenReview
    assert not await reviews.allows("bad")
    assert asked == [("good", "laneway-routes"), ("bad", "laneway-routes")]
    down = True
    assert not await reviews.allows("other")  # unknown and unreviewable: refused
    assert await reviews.allows("good")  # still remembered

    expiring = TokenReviews(review, ttl=0.0)
    assert not await expiring.allows("good")  # asked again, and the API server is away


async def test_feed_answers_snapshots_changes_and_bad_input() -> None:
    feed = RoutesBroadcaster(first_version=1000)
    feed.publish(RouteTable(baseline={"pricing.shop": Upstream("127.0.0.1", 8080)}))
    app = feed_app(feed, FixedToken("t0k"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://operator") as http:
        auth = {"authorization": "Bearer t0k"}
        snapshot = (await http.get("/v1/routes", headers=auth)).json()
        assert snapshot["version"] == 1001
        assert snapshot["snapshot"]["baseline"]["pricing.shop"]["port"] == 8080
        current = await http.get("/v1/routes", params={"since": 1001}, headers=auth)
        assert current.json() == {"version": 1001, "changes": []}
        bad = await http.get("/v1/routes", params={"since": "yesterday"}, headers=auth)
        assert bad.status_code == 400
        assert "since must be an integer" in bad.json()["error"]
        wrong = await http.get("/v1/routes", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await http.get("/healthz")).text == "ok"
