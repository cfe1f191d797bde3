"""Baggage routing (issue 11, item 11): the key is the baggage member `laneway-key`, found at
member boundaries; percent-encoded properties and padding do not change which fork it names;
routed responses carry `laneway-served-by`.

TWO_MEMBERS_KEEP: which of two `laneway-key` members the router must use, the one the
OpenTelemetry SDKs keep. Another helper is establishing it across the SDKs; the Python SDK's
W3CBaggagePropagator (opentelemetry-api, in this venv) keeps the last one
(`laneway-key=a,laneway-key=b` extracts as {'laneway-key': 'b'}). Change the constant if the
finding differs; the two cases below follow it.
"""

from __future__ import annotations

import pytest

from tests.protocol.corpus.conftest import Conform
from tests.protocol.corpus.harness import (
    BROKEN_KEY,
    FORK_KEY,
    SERVED_BY_FORK,
    Case,
    Resp,
    U,
    simple,
)

TWO_MEMBERS_KEEP = "last"  # "first" or "last"

K = FORK_KEY.encode()
FORKED = ((b"laneway-served-by", SERVED_BY_FORK),)
BASELINE = ((b"laneway-served-by", b"svc"),)


def _to_fork(name: str, why: str, *fields: bytes) -> Case:
    head = b"GET /a HTTP/1.1\r\nhost: x\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    return simple(name, why, head, (Resp(200, body=b"/a", headers=FORKED),), (),
                  fork=(U(b"GET /a HTTP/1.1", b"host: x", *fields),))


def _to_baseline(name: str, why: str, *fields: bytes) -> Case:
    head = b"GET /a HTTP/1.1\r\nhost: x\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    return simple(name, why, head, (Resp(200, body=b"/a", headers=BASELINE),),
                  (U(b"GET /a HTTP/1.1", b"host: x", *fields),))


def _two(name: str, why: str, first: bytes, second: bytes) -> Case:
    chosen = first if TWO_MEMBERS_KEEP == "first" else second
    field = b"baggage: laneway-key=" + first + b",laneway-key=" + second
    if chosen == K:
        return _to_fork(name, why, field)
    return _to_baseline(name, why, field)


CASES: tuple[Case, ...] = (
    _to_fork("baggage_member", "`baggage: laneway-key=K` routes to K's fork",
             b"baggage: laneway-key=" + K),
    _to_fork("baggage_percent_encoded_property",
             "`laneway-key=K%3Bttl%3D60` (a property percent-encoded by a propagator) is K",
             b"baggage: laneway-key=" + K + b"%3Bttl%3D60"),
    _to_fork("baggage_property", "`laneway-key=K;ttl=60`: the property is not the key",
             b"baggage: laneway-key=" + K + b";ttl=60"),
    _to_fork("baggage_percent_encoded_space", "`laneway-key=K%20`: encoded padding is not the key",
             b"baggage: laneway-key=" + K + b"%20"),
    _to_fork("baggage_among_members_with_ows",
             "whitespace around members, `=` and `;`, among other members",
             b"baggage: a=1 , laneway-key = " + K + b" ;p=q, b=2"),
    _to_fork("baggage_second_field", "the member in a second `baggage` field",
             b"baggage: a=1", b"baggage: laneway-key=" + K),
    _to_fork("tracestate_member", "`tracestate: laneway=K` routes too",
             b"tracestate: vendor=1,laneway=" + K),
    _to_baseline("baggage_prefixed_name", "`xlaneway-key=K` is another member",
                 b"baggage: xlaneway-key=" + K),
    _to_baseline("baggage_longer_value", "`laneway-key=Kx` is another key",
                 b"baggage: laneway-key=" + K + b"x"),
    _to_baseline("baggage_in_other_value", "`a=laneway-key=K` is member a's value",
                 b"baggage: a=laneway-key=" + K),
    _to_baseline("no_baggage", "no key: the baseline, which says so in laneway-served-by"),
    _two("two_members_key_first", f"two laneway-key members: the {TWO_MEMBERS_KEEP} one counts "
         "(as the OpenTelemetry SDKs keep)", K, b"otherkey99"),
    _two("two_members_key_second", f"two laneway-key members: the {TWO_MEMBERS_KEEP} one counts",
         b"otherkey99", K),
    simple("fork_not_ready", "a key whose fork is not ready: 503 naming it, nothing forwarded",
           b"GET /a HTTP/1.1\r\nhost: x\r\nbaggage: laneway-key=" + BROKEN_KEY.encode()
           + b"\r\n\r\n",
           (Resp(503, error=r"sb-b|crashed|not ready",
                 headers=((b"laneway-served-by", b"svc@sb-b"),)),), (), fork=()),
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_baggage(case: Case, conform: Conform) -> None:
    await conform(case)
