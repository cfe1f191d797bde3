"""The routing key's extraction from headers: the contract's table, and the fast path held to
the plain W3C reading by property tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laneway.core.baggage import (
    baggage_value,
    key_from_baggage,
    key_from_tracestate,
    parse_baggage,
)

KEY = "abc123def456"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"laneway-key={KEY}", KEY),
        (f"a=1,laneway-key={KEY}", KEY),
        (f"a=1, laneway-key={KEY}, b=2", KEY),
        (f"a=1,\tlaneway-key = {KEY} ;prop=x;flag", KEY),
        (f"laneway-key={KEY};p=1,other=2", KEY),
        ("laneway-key=abc%20def", "abc def"),
        ("laneway-key=abc%2Cdef", "abc,def"),
        (f"laneway-key={KEY}x", f"{KEY}x"),  # a different key, not a prefix match
        (f"xlaneway-key={KEY}", None),
        (f"laneway-keys={KEY}", None),
        (f"a=laneway-key={KEY}", None),
        (f"a=1;laneway-key={KEY}", None),  # a property of another member
        ("laneway-key=", None),
        ("laneway-key= ;p", None),
        ("", None),
        (f"laneway-key={KEY},laneway-key=second", KEY),  # first member wins
    ],
)
def test_baggage_members(header: str, expected: str | None) -> None:
    assert key_from_baggage(header.encode()) == expected


def test_several_baggage_headers_are_one_list() -> None:
    joined = b",".join([b"a=1", f"laneway-key={KEY}".encode()])
    assert key_from_baggage(joined) == KEY


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"laneway={KEY}", KEY),
        (f"congo=t61rcWkgMzE, laneway={KEY}", KEY),
        (f"xlaneway={KEY}", None),
        (f"rojo=00f067aa0ba902b7,laneway={KEY} ", KEY),
        ("laneway-key=abc", None),
    ],
)
def test_tracestate_members(header: str, expected: str | None) -> None:
    assert key_from_tracestate(header.encode()) == expected


def test_baggage_value_round_trips() -> None:
    assert key_from_baggage(baggage_value(KEY).encode()) == KEY


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12)
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789%!*", max_size=14)
_ows = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def baggage_headers(draw: st.DrawFn) -> str:
    members = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(_token, st.just("laneway-key")))
        value = draw(_value)
        props = draw(st.lists(_token, max_size=2))
        member = f"{draw(_ows)}{name}{draw(_ows)}={draw(_ows)}{value}{draw(_ows)}"
        member += "".join(f";{p}" for p in props)
        members.append(member)
    return ",".join(members)


def _valid_percent(value: str) -> bool:
    # Bytes that are not UTF-8 after decoding are rejected by the fast path, not replaced.
    from urllib.parse import unquote_to_bytes

    try:
        unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(baggage_headers())
def test_fast_path_agrees_with_w3c_reading(header: str) -> None:
    expected = parse_baggage(header).get("laneway-key") or None
    got = key_from_baggage(header.encode())
    raw = next((m.split(";")[0].split("=", 1)[1].strip(" \t") for m in header.split(",")
                if "=" in m.split(";")[0] and m.split(";")[0].split("=")[0].strip(" \t")
                == "laneway-key"), None)
    if raw is not None and not _valid_percent(raw):
        assert got is None
    else:
        assert got == expected


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=4))
def test_no_prefix_or_suffix_matches(key: str, extra: str) -> None:
    assert key_from_baggage(f"laneway-key={key}{extra}".encode()) == key + extra
    assert key_from_baggage(f"{extra}laneway-key={key}".encode()) is None
