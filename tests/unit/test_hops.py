"""Hop records as they travel (router → data plane → control plane → clients): JSON both ways,
older records without the newer fields still readable, and the sentence a conflict is shown with."""

from __future__ import annotations

from laneway.core.hops import Hop, key_conflict_note

HOP = Hop(1.5, "t" * 32, "p" * 16, "web", "abc123def456", "sb", "web@sb#1", 200, 1.25, "GET",
          "/x", key_conflict=True)


def test_json_round_trip_keeps_the_conflict_mark() -> None:
    data = HOP.to_json()
    assert data["key_conflict"] is True
    assert Hop.from_json(data) == HOP
    assert Hop.from_json({**data, "key_conflict": False}).key_conflict is False


def test_a_record_from_before_the_conflict_mark_is_read() -> None:
    old = {k: v for k, v in HOP.to_json().items() if k not in ("key_conflict", "error")}
    hop = Hop.from_json(old)
    assert (hop.key_conflict, hop.error, hop.routing_key) == (False, "", "abc123def456")


def test_the_conflict_sentence_counts_hops() -> None:
    assert key_conflict_note(0) == ""
    assert key_conflict_note(1).startswith("1 hop carried two different laneway-key members; "
                                           "the router used the last one, as OpenTelemetry does")
    assert key_conflict_note(3).startswith("3 hops carried")
