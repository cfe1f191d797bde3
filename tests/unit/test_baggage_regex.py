"""The rendered Istio regexes select the member the router selects: under RE2 (the engine Envoy
uses, `google-re2`), for every case of the shared table and every key, and for generated baggage
(members, properties, whitespace, percent-encoding, several `laneway-key` members)."""

from __future__ import annotations

from typing import Any

import pytest
import re2
from hypothesis import given
from hypothesis import strategies as st

from laneway.core.baggage import baggage_key, key_from_tracestate
from laneway.core.kubernetes import baggage_regex, tracestate_regex
from laneway.core.kubernetes.regex import KEY_CHARACTERS
from tests.baggage_cases import BAGGAGE_CASES, K1, K2, REGEX_KEYS, TRACESTATE_CASES, Case

# Istio's proxies run with the runtime flag re2.max_program_size.error_level = 32768; Envoy
# refuses a bigger program.
ISTIO_MAX_PROGRAM_SIZE = 32768
_BAGGAGE = {key: re2.compile(baggage_regex(key)) for key in REGEX_KEYS}
_TRACESTATE = {key: re2.compile(tracestate_regex(key)) for key in REGEX_KEYS}


def envoy_match(regex: Any, headers: tuple[str, ...]) -> bool:
    # Envoy joins several headers of one name with "," and matches the whole value.
    return regex.fullmatch(",".join(headers)) is not None


@pytest.mark.parametrize("case", BAGGAGE_CASES, ids=lambda c: repr(c.joined))
def test_the_regex_of_every_key_agrees_with_the_router(case: Case) -> None:
    picked = baggage_key(case.joined.encode())[0]
    assert picked == case.key
    matched = {key for key, regex in _BAGGAGE.items() if envoy_match(regex, case.headers)}
    assert matched == ({picked} & set(_BAGGAGE))


@pytest.mark.parametrize("case", TRACESTATE_CASES, ids=lambda c: repr(c.joined))
def test_the_tracestate_regexes_agree_with_the_router(case: Case) -> None:
    picked = key_from_tracestate(case.joined.encode())
    matched = {key for key, regex in _TRACESTATE.items() if envoy_match(regex, case.headers)}
    assert matched == ({picked} & set(_TRACESTATE))


@pytest.mark.parametrize(
    ("header", "key"),
    [(f"user=\u00e9t\u00e9,laneway-key={K1}".encode(), K1),  # UTF-8 elsewhere: still K1
     (f"user=\xe9,laneway-key={K1}".encode("latin-1"), None),  # not UTF-8: RE2 reads no text
     (f"laneway-key={K1},a=\xff\xfe".encode("latin-1"), None),
     (f"laneway-key={K1};p=\xe9".encode("latin-1"), None)],
)
def test_bytes_that_are_not_utf8_carry_no_key_for_either(header: bytes, key: str | None) -> None:
    # Envoy hands RE2 the raw header bytes, and RE2 (UTF-8 mode) matches no invalid text.
    assert baggage_key(header)[0] == key
    assert (_BAGGAGE[K1].fullmatch(header) is not None) == (key == K1)
    tracestate = header.replace(b"laneway-key=", b"laneway=")
    assert key_from_tracestate(tracestate) == key
    assert (_TRACESTATE[K1].fullmatch(tracestate) is not None) == (key == K1)


def test_the_regexes_fit_istios_program_size_limit() -> None:
    for key in (K1, "~" * 12, "a" * 64):
        for regex in (baggage_regex(key), tracestate_regex(key)):
            assert re2.compile(regex).programsize < ISTIO_MAX_PROGRAM_SIZE


def test_any_key_character_is_escaped() -> None:
    # Every character a key may contain, each once: punctuation must be literal in RE2.
    key = "".join(sorted(KEY_CHARACTERS))
    header = f"a=1,laneway-key={key};p"
    assert baggage_key(header.encode())[0] == key
    assert re2.fullmatch(baggage_regex(key), header) is not None
    assert re2.fullmatch(baggage_regex(key), f"laneway-key={key[:-1]}") is None


@pytest.mark.parametrize("key", ["", "a b", "a,b", "a;b", "a%b", "a+b", "ä"])
def test_keys_the_regex_cannot_carry_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="routing key"):
        baggage_regex(key)


# Generated baggage: members as SDKs and people write them.

_ENCODINGS = st.sampled_from(["literal", "upper", "lower"])
_OWS_LITERAL = st.sampled_from(["", " ", "\t", "  "])
_VALUE_OWS = st.sampled_from(["", " ", "+", "%20", "%09", "%2B", "%2b", " %20"])
_PROPERTIES = st.sampled_from(["", ";p=1", ";flag;q", "%3Bttl%3D60", "%3bp", "%3B%FF",
                               " ;p", "+%3Bp%3D1", "%2B%3Bp"])
_NAMES = st.sampled_from(["laneway-key", "laneway-key", "laneway-key", "a", "sentry-trace",
                          "laneway", "laneway-ke", "laneway-keyx", "xlaneway-key", "userId",
                          "laneway-key;p", "LANEWAY-KEY"])
_VALUES = st.sampled_from([K1, K2, K1 + "x", K1[:-1], "abc", "abcd", "", "%", "%3", "v%20x",
                           "%FF"])


def _encode(value: str, how: st.DrawFn) -> str:
    out = []
    for ch in value:
        form = how(_ENCODINGS)
        if form == "literal" or ch == "%":
            out.append(ch)
        else:
            code = f"%{ord(ch):02X}"
            out.append(code if form == "upper" else code.lower())
    return "".join(out)


@st.composite
def baggage(draw: st.DrawFn) -> str:
    members = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 9)) == 0:
            members.append(draw(st.sampled_from(["", " ", "laneway-key", "a;laneway-key=x"])))
            continue
        value = _encode(draw(_VALUES), draw)
        members.append(f"{draw(_OWS_LITERAL)}{draw(_NAMES)}{draw(_OWS_LITERAL)}="
                       f"{draw(_OWS_LITERAL)}{draw(_VALUE_OWS)}{value}{draw(_VALUE_OWS)}"
                       f"{draw(_PROPERTIES)}")
    return ",".join(members)


@given(st.lists(baggage(), min_size=1, max_size=3))
def test_regex_and_router_agree_on_generated_baggage(headers: list[str]) -> None:
    picked = baggage_key(",".join(headers).encode())[0]
    for key, regex in _BAGGAGE.items():
        assert envoy_match(regex, tuple(headers)) == (picked == key), (key, picked)
