"""The routing key's extraction from headers: the shared table (tests/baggage_cases.py), the fast
path held to the plain W3C reading by property tests, and `with_key`, which laneway's own tools
use to put a key on a request."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laneway.core.baggage import (
    baggage_key,
    baggage_value,
    headers_with_key,
    key_from_baggage,
    key_from_tracestate,
    member_key,
    parse_baggage,
    with_key,
)
from tests.baggage_cases import BAGGAGE_CASES, K1, K2, TRACESTATE_CASES, Case


@pytest.mark.parametrize("case", BAGGAGE_CASES, ids=lambda c: repr(c.joined))
def test_the_table(case: Case) -> None:
    value = case.joined.encode()
    assert baggage_key(value) == (case.key, case.conflict)
    assert key_from_baggage(value) == case.key
    assert (parse_baggage(case.joined).get("laneway-key") or None) == case.key


@pytest.mark.parametrize("case", TRACESTATE_CASES, ids=lambda c: repr(c.joined))
def test_the_tracestate_table(case: Case) -> None:
    assert key_from_tracestate(case.joined.encode()) == case.key


def test_baggage_value_round_trips() -> None:
    assert key_from_baggage(baggage_value(K1).encode()) == K1


@pytest.mark.parametrize(
    ("value", "expected"),
    [(K1, K1), (f"{K1};ttl=60", K1), (f" {K1} ;p", K1), ("", None), (";p", None)],
)
def test_member_key_reads_an_sdk_value(value: str, expected: str | None) -> None:
    # What OpenTelemetry-Python's get_baggage("laneway-key") returns for `K;ttl=60`.
    assert member_key(value) == expected


@pytest.mark.parametrize(
    ("baggage", "expected"),
    [
        (None, f"laneway-key={K1}"),
        ("", f"laneway-key={K1}"),
        ("a=1", f"laneway-key={K1},a=1"),
        (f"a=1,laneway-key={K2}", f"a=1,laneway-key={K1}"),
        (f"a=1,laneway-key={K2};p=1,b=2", f"a=1,laneway-key={K1},b=2"),
        (f"laneway-key={K2},a=1, laneway-key = x,b=2", f"laneway-key={K1},a=1,b=2"),
        ("a=1,laneway-key=,b=2;p", f"a=1,laneway-key={K1},b=2;p"),
        (f"xlaneway-key={K2}", f"laneway-key={K1},xlaneway-key={K2}"),
        (f"a=1;laneway-key={K2}", f"laneway-key={K1},a=1;laneway-key={K2}"),
        ("a=1, ,b=2,", f"laneway-key={K1},a=1,b=2"),
    ],
)
def test_with_key_replaces_a_key(baggage: str | None, expected: str) -> None:
    assert with_key(baggage, K1) == expected
    assert baggage_key(expected.encode()) == (K1, False)


def test_headers_with_key_keeps_one_baggage_header_in_any_case() -> None:
    sent = headers_with_key({"Baggage": f"a=1,laneway-key={K2}", "x-a": "1"}, K1)
    assert sent == {"x-a": "1", "baggage": f"a=1,laneway-key={K1}"}
    assert headers_with_key({}, K1) == {"baggage": f"laneway-key={K1}"}


# Property tests: baggage as real stacks write it, held to the plain reading and to with_key.

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12)
_names = st.one_of(_token, st.sampled_from(["laneway-key", "laneway-keyx", "xlaneway-key",
                                            "laneway"]))
_ows = st.sampled_from(["", " ", "\t", "  "])
_raw = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789%!*+ ", max_size=14)


@st.composite
def _encoded_value(draw: st.DrawFn) -> str:
    """A value, a key or not, with its properties, encoded the ways SDKs encode it."""
    value = draw(st.one_of(st.sampled_from([K1, K2, "", K1 + "x"]), _raw))
    props = "".join(f";{p}" for p in draw(st.lists(_token, max_size=2)))
    how = draw(st.sampled_from(["plain", "quote", "quote_plus", "pad"]))
    if how == "quote":  # OpenTelemetry-JS's encodeURIComponent of `value;props`
        return quote(value + props, safe="")
    if how == "quote_plus":  # OpenTelemetry-Python, properties and OWS inside the value
        return quote(value + draw(_ows) + props, safe="").replace("%20", "+")
    if how == "pad":
        return draw(st.sampled_from(["%20", "+", "%09", ""])) + value + props
    return value + draw(_ows) + props


@st.composite
def baggage_headers(draw: st.DrawFn) -> str:
    members = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(_names)
        members.append(f"{draw(_ows)}{name}{draw(_ows)}={draw(_ows)}{draw(_encoded_value())}")
    return ",".join(members)


def _members_keys(header: str) -> list[str | None]:
    """Each `laneway-key` member's key, read the plain way, in order."""
    out: list[str | None] = []
    for member in header.split(","):
        head = member.split(";", 1)[0]
        name, sep, _ = head.partition("=")
        if sep and name.strip(" \t") == "laneway-key":
            out.append(parse_baggage(member).get("laneway-key") or None)
    return out


@given(baggage_headers())
def test_fast_path_agrees_with_the_plain_reading(header: str) -> None:
    keys = _members_keys(header)
    expected = (keys[-1] if keys else None, len(set(keys)) > 1)
    assert baggage_key(header.encode()) == expected
    assert (parse_baggage(header).get("laneway-key") or None) == expected[0]


def _is_key_member(member: str) -> bool:
    name, sep, _ = member.split(";", 1)[0].partition("=")
    return bool(sep) and name.strip(" \t") == "laneway-key"


@given(baggage_headers(), st.sampled_from([K1, K2]))
def test_with_key_leaves_one_key_and_the_rest_in_order(header: str, key: str) -> None:
    out = with_key(header, key)
    assert baggage_key(out.encode()) == (key, False)
    members = [m for m in header.split(",") if m.strip(" \t")]
    others = [m.strip(" \t") for m in members if not _is_key_member(m)]
    first = next((i for i, m in enumerate(members) if _is_key_member(m)), None)
    position = 0 if first is None else sum(1 for m in members[:first] if not _is_key_member(m))
    expected = [*others[:position], baggage_value(key), *others[position:]]
    assert out.split(",") == expected


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=4))
def test_no_prefix_or_suffix_matches(key: str, extra: str) -> None:
    assert key_from_baggage(f"laneway-key={key}{extra}".encode()) == key + extra
    assert key_from_baggage(f"{extra}laneway-key={key}".encode()) is None
