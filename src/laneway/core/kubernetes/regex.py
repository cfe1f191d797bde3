"""Header regexes for Istio/Envoy: a `baggage` (or `tracestate`) value matches the regex for key K
exactly when the router's `core.baggage.baggage_key` (`key_from_tracestate`) picks K from it.

Envoy matches a regex against the whole header value, and it joins several headers of one name
with `,` first (in order), which is how the router reads them too. The rules, from
`core.baggage`: members split at `,`; a member named `laneway-key` (OWS around the name and `=`)
whose raw value, after percent-decoding and cutting at its properties (a literal `;`, or `%3B`
inside the raw value) and at whitespace (space, tab, `+`; literal or `%20`, `%09`, `%2B`), is K;
and no later `laneway-key` member: the last one decides, an empty one included. Member
boundaries are exact (`laneway-key=abcx` and `xlaneway-key=abc` do not match). An encoded comma
(`K%2C`) does not end a value: no stack sends one after a key, since members are split before
they are decoded. Envoy runs RE2 in UTF-8 mode, where a value with bytes that are not UTF-8
matches nothing; the router reads no key from such a value either.

The shape, in RE2 (linear time: no lookahead, no backreference; every piece is a plain
alternation, class or star):

    ^(?:.*,)?  <member with K>  (?:,<member not named laneway-key>)*$

"A member not named laneway-key" has no lookahead to lean on, so it is spelled out as the
complement of the name's prefix: OWS, then either the end, or a proper prefix of the name
followed by the end or by a character that breaks it, or the whole name followed by OWS and the
end or a character other than `=`. It compiles to about 250 RE2 instructions, a whole regex for a
12-character key to about 360: far under the limit of Istio's proxies (the runtime flag
`re2.max_program_size.error_level`, which Istio sets to 32768; Envoy's own default, 100, was
already below the regexes laneway rendered before).
"""

from __future__ import annotations

from laneway.core.baggage import BAGGAGE_MEMBER, TRACESTATE_MEMBER

__all__ = ["KEY_CHARACTERS", "baggage_regex", "tracestate_regex"]

# What a key may contain for these regexes: baggage-octets (W3C Baggage) except `%` and `+`,
# which the router reads as an escape and as whitespace. laneway's keys are [a-z0-9]{12}
# (core.keys; the CRDs check it), far inside this.
KEY_CHARACTERS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('",;\\%+')

_OWS = "[ \\t]*"  # around a member's name and its `=`: literal, as the router reads them
# At the ends of a value, after decoding: space, tab and `+` (OpenTelemetry-Python writes a
# space as `+`), literal or percent-encoded.
_VALUE_OWS = "(?:[ \\t+]|%20|%09|%2[Bb])*"
# Properties: a literal `;` ends the raw value; a `%3B` inside it ends the decoded one. Either
# way the rest of the member is not part of the key.
_PROPERTIES = "(?:(?:;|%3[Bb])[^,]*)?"


def _literal(ch: str) -> str:
    return ch if ch.isalnum() else "\\" + ch


def _hex_digit(digit: str) -> str:
    return f"[{digit.upper()}{digit.lower()}]" if digit.isalpha() else digit


def _char(ch: str) -> str:
    """One character of the key, literal or percent-encoded (either hex case)."""
    code = f"{ord(ch):02x}"
    return f"(?:{_literal(ch)}|%{_hex_digit(code[0])}{_hex_digit(code[1])})"


def _not_named(name: str) -> str:
    """A member (no comma) whose name is not `name`, i.e. that does not start with
    OWS name OWS `=`: the complement of that prefix, built from the name's end backwards."""
    rest = "[^,]*"
    tail = f"{_OWS}(?:[^ \\t,=]{rest})?"  # the whole name, then no `=`
    for i in reversed(range(len(name))):
        ch = name[i]
        leading = " \\t" if i == 0 else ""  # the leading OWS is taken by _OWS
        breaks = f"[^,{leading}{_literal(ch)}]"
        tail = f"(?:{_literal(ch)}{tail}|{breaks}{rest})?"
    return _OWS + tail


def _check(key: str) -> None:
    bad = sorted(set(key) - KEY_CHARACTERS)
    if not key or bad:
        raise ValueError(f"routing key {key!r} cannot be matched in baggage: "
                         + (f"characters {''.join(bad)!r} are not allowed" if bad else "empty"))


def _last_member(name: str, key: str) -> str:
    _check(key)
    value = "".join(_char(c) for c in key)
    member = f"{_OWS}{_literal_name(name)}{_OWS}={_VALUE_OWS}{value}{_VALUE_OWS}{_PROPERTIES}"
    return f"^(?:.*,)?{member}(?:,{_not_named(name)})*$"


def _literal_name(name: str) -> str:
    return "".join(_literal(c) for c in name)


def baggage_regex(key: str) -> str:
    """Matches a `baggage` value whose last `laneway-key` member carries `key`."""
    return _last_member(BAGGAGE_MEMBER, key)


def tracestate_regex(key: str) -> str:
    """Matches a `tracestate` value whose last `laneway` member carries `key`."""
    return _last_member(TRACESTATE_MEMBER, key)
