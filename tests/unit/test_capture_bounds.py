"""What the control plane keeps of captured exchanges (issue 13, item 3): bounded by the bytes
of their bodies and by age, oldest dropped first, the hop records themselves kept; and what a
replay makes of them (credentials stored hashed, given back by the user, gRPC not replayed)."""

from __future__ import annotations

import time

from laneway.control.diffs import captured_requests
from laneway.core.hoplog import HopLog
from laneway.core.hops import Hop


def _hop(at: float, body: str = "", capture: bool = True) -> Hop:
    return Hop(at=at, trace_id="", parent_id="", service="web", routing_key="", destination=
               "baseline", fork="", status=200, duration_ms=1.0, method="GET", path="/",
               capture={"id": f"c{at}", "request": {"method": "GET", "target": "/",
                                                     "headers": [], "body": ""},
                        "response": {"status": 200, "headers": [], "body": body}}
               if capture else None)


def test_captures_beyond_the_byte_bound_are_dropped_oldest_first() -> None:
    log = HopLog(1000, capture_max_bytes=10_000, capture_max_age=3600)
    now = time.time()
    log.add([_hop(now + i, "x" * 3000) for i in range(5)])  # 3,512 bytes each as counted
    kept = log.captures()
    assert [h.at for h in kept] == [now + 3, now + 4]
    assert len(log) == 5  # the hops stay, without their captures
    assert [h.capture is None for h in log.query(limit=10)] == [True, True, True, False, False]


def test_captures_older_than_the_age_bound_are_dropped() -> None:
    log = HopLog(1000, capture_max_bytes=1 << 30, capture_max_age=60)
    now = time.time()
    log.add([_hop(now - 120), _hop(now - 30), _hop(now, capture=False)])
    assert [h.at for h in log.captures()] == [now - 30]


def test_credentials_stored_hashed_are_left_out_or_given_back() -> None:
    capture = {"service": "web", "truncated": False,
               "request": {"method": "GET", "target": "/me?x=1", "body": "",
                           "headers": [["authorization", "redacted:0123456789ab"],
                                       ["accept", "application/json"],
                                       ["x-api-key", "redacted:ba9876543210"]]}}
    requests, note = captured_requests([capture], {"web": 8080})
    assert requests[0]["url"] == "http://127.0.0.1:8080/me?x=1"
    assert requests[0]["headers"] == [("accept", "application/json")]
    assert "authorization, x-api-key" in note
    assert "--header" in note
    given, note = captured_requests([capture], {"web": 8080},
                                    [("Authorization", "Bearer t"), ("X-Api-Key", "k")])
    assert given[0]["headers"] == [("accept", "application/json"),
                                   ("Authorization", "Bearer t"), ("X-Api-Key", "k")]
    assert note == ""


def test_grpc_calls_and_cut_bodies_are_not_replayable() -> None:
    base = {"service": "web", "request": {"method": "POST", "target": "/x", "headers": [],
                                          "body": "abc"}}
    requests, _ = captured_requests([{**base, "grpc": True}, {**base, "truncated": True},
                                     {**base, "service": "gone"}], {"web": 1})
    assert len(requests) == 2  # a service no longer in the project has no port to replay to
    assert requests[0]["skip"].startswith("gRPC call")
    assert requests[1]["body"] is None
