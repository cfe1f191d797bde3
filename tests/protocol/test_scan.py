"""The compiled scans (`router/_scan.c`) return exactly what the Python ones (`router/scan.py`,
the reference) return, for every input: the heads the other protocol tests send, each of them
cut at every length and with each byte replaced by the bytes that matter to the grammar, and
heads generated from the grammar with hypothesis (names in any case, OWS, values with any
byte, framing fields right and wrong).

Where a C compiler exists the extension must have been built: a failed build falls back
silently at install, so this is where it shows."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laneway.core.baggage import baggage_key
from laneway.router import scan
from laneway.router.hops import HopRecorder
from tests.baggage_cases import BAGGAGE_CASES, Case

_scan = pytest.importorskip("laneway.router._scan") if scan.COMPILED else None

REQUESTS = [
    b"GET /a?b=1 HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc:8080\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: svc\r\nbaggage: a=1, laneway-key=k1;p=1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nBaggage: a=1\r\nBAGGAGE: laneway-key=k2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\ntracestate: laneway=k3\r\nTraceParent: 00-ab-cd-01\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
    b"X-A: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection:KEEP-ALIVE \t\r\nHost: svc\r\nkeep-alive:\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: svc\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    b"hello",
    b"PUT /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n",
    b"PATCH /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 007\r\n\r\n1234567",
    b"DELETE /p HTTP/1.1\r\nHost: svc\r\nX-Empty:\r\nX-Spaces:   v  \r\n\r\n",
    b"OPTIONS /p HTTP/1.1\r\nHost: svc\r\nX-Obs: caf\xc3\xa9\r\nOrigin: http://x\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nUpgrade: h2c\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PURGE / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
    b"HTTP/1.1 404 Not Found\r\ncontent-length:0\r\n\r\n",
    b"HTTP/1.1 503\r\nContent-Length: 2\r\nRetry-After: 1\r\n\r\nno",
    b"HTTP/1.1 200 \r\nX-Empty:\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\nKeep-Alive: max=5\r\n"
    b"\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 99 + b"Content-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 100 + b"Content-Length: 0\r\n\r\n",
]

# What a byte may be replaced by: the grammar's delimiters and the classes' edges.
SWAPS = b"\r\n\x00\t :;,/=-A\x7f\x80\xff0"
LIMITS = (65536, 40, 16)


def variants(base: bytes) -> Iterator[bytes]:
    yield base
    for cut in range(len(base)):
        yield base[:cut]
    for at in range(len(base)):
        for byte in SWAPS:
            if base[at] != byte:
                yield base[:at] + bytes([byte]) + base[at + 1:]


def same(data: bytes, limit: int) -> None:
    assert _scan is not None
    assert _scan.scan_request(data, limit) == scan.py_scan_request(data, limit), data
    assert _scan.simple_response(data, limit) == scan.py_simple_response(data, limit), data
    for served in (b"", b"svc@sb"):
        assert _scan.simple_answer(data, limit, served) == \
            scan.py_simple_answer(data, limit, served), data


def test_the_extension_is_built_where_a_compiler_is() -> None:
    if os.environ.get("LANEWAY_PURE_PYTHON", "") not in ("", "0"):
        assert not scan.COMPILED
        assert scan.scan_request is scan.py_scan_request
        return
    if shutil.which("cc") or shutil.which("gcc"):
        assert scan.COMPILED, "a C compiler is here but laneway/router/_scan.c was not built " \
            "(reinstall: pip install -e . -v shows why)"


needs_compiled = pytest.mark.skipif(not scan.COMPILED, reason="the extension is not built")


@needs_compiled
@pytest.mark.parametrize("base", REQUESTS + RESPONSES)
def test_every_cut_and_swap_of_a_head_scans_alike(base: bytes) -> None:
    for data in variants(base):
        for limit in LIMITS:
            same(data, limit)


@needs_compiled
def test_the_scans_say_yes_where_they_should() -> None:
    """So that the comparison above is not of two functions that always say None."""
    assert _scan is not None
    accepted = [raw for raw in REQUESTS if _scan.scan_request(raw, 65536) is not None]
    assert len(accepted) == 12
    found = _scan.scan_request(REQUESTS[5], 65536)
    assert found is not None
    assert found[8] == b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\nvia: 1.1 laneway\r\n\r\n"
    assert _scan.simple_response(RESPONSES[4], 65536) == (
        200, len(RESPONSES[4]) - 2, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    assert [_scan.simple_response(raw, 65536) is not None for raw in RESPONSES[-2:]] == [
        True, False]  # 100 fields and the length, then one more
    assert _scan.simple_answer(RESPONSES[4], 65536, b"svc@sb") == (
        200, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nlaneway-served-by: svc@sb\r\n"
        b"via: 1.1 laneway\r\n\r\nok")


@needs_compiled
def test_bad_arguments_are_refused_not_crashed_on() -> None:
    assert _scan is not None
    with pytest.raises(TypeError):
        _scan.scan_request("GET / HTTP/1.1\r\n\r\n", 65536)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _scan.simple_response(b"x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _scan.simple_response(bytearray(b"x"), 65536)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _scan.simple_answer(RESPONSES[0], 65536, "svc@sb")  # type: ignore[arg-type]


@needs_compiled
def test_nothing_is_kept_from_a_call() -> None:
    """No reference leaked: the input's count is unchanged and memory does not grow."""
    assert _scan is not None
    data, response = REQUESTS[5], RESPONSES[4]
    before = sys.getrefcount(data), sys.getrefcount(response)
    tracemalloc.start()
    try:
        for _ in range(2000):  # warm up the allocator's pools
            _scan.scan_request(data, 65536)
            _scan.simple_response(response, 65536)
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(20000):
            _scan.scan_request(data, 65536)
            _scan.simple_response(response, 65536)
            _scan.simple_answer(response, 65536, b"svc@sb")
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert (sys.getrefcount(data), sys.getrefcount(response)) == before
    assert grown < 20000, f"{grown} bytes kept by 20,000 calls"


NAMES = st.sampled_from([
    "Host", "host", "HOST", "baggage", "Baggage", "content-length", "Content-Length",
    "traceparent", "tracestate", "origin", "connection", "Connection", "keep-alive",
    "proxy-connection", "te", "TE", "transfer-encoding", "upgrade", "trailer",
    "http2-settings", "x-a", "accept", "hostx", "t", "content-lengthx", "x:y", "a b", "",
]) | st.sampled_from(["x-a", "Accept", "baggage", "traceparent", "TraceState", "keep-alive"])
VALUES = st.one_of(
    st.sampled_from(["svc", "keep-alive", "KEEP-ALIVE", "close", "5", "05", "+5", "", " ",
                     "0", "1234567890123456", "a=1, laneway-key=k", "timeout=5"]),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
)
OWS = st.sampled_from(["", " ", "\t", "  ", " \t"])


@st.composite
def heads(draw: st.DrawFn, response: bool) -> bytes:
    start = draw(st.sampled_from(
        ["HTTP/1.1 200 OK", "HTTP/1.1 204", "HTTP/1.1 404 Not Found", "HTTP/1.1 200",
         "HTTP/1.1 301 \x80", "HTTP/1.0 200 OK"] if response else
        ["GET / HTTP/1.1", "POST /p?q HTTP/1.1", "HEAD /x HTTP/1.1", "GET /\x80 HTTP/1.1",
         "PURGE / HTTP/1.1", "GET * HTTP/1.1", "OPTIONS /a HTTP/1.0"]))
    fields = draw(st.lists(st.tuples(NAMES, OWS, VALUES, OWS), max_size=4))
    body = draw(st.binary(max_size=8))
    # Mostly well framed, so that both outcomes are common: the Host a request needs and the
    # length its body has, each at a drawn place.
    if draw(st.integers(0, 3)):
        fields.insert(draw(st.integers(0, len(fields))),
                      ("Content-Length", draw(OWS), str(len(body)), draw(OWS)))
    if not response and draw(st.integers(0, 3)):
        fields.insert(draw(st.integers(0, len(fields))), ("Host", " ", "svc:80", ""))
    lines = [start] + [f"{name}:{left}{value}{right}" for name, left, value, right in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@needs_compiled
@settings(max_examples=3000, deadline=None)
@given(heads(response=False), st.sampled_from(LIMITS))
def test_generated_requests_scan_alike(data: bytes, limit: int) -> None:
    same(data, limit)


@needs_compiled
@settings(max_examples=3000, deadline=None)
@given(heads(response=True), st.sampled_from(LIMITS))
def test_generated_responses_scan_alike(data: bytes, limit: int) -> None:
    same(data, limit)


def same_key(value: bytes) -> None:
    """The compiled key is baggage_key's wherever it answers."""
    assert _scan is not None
    found = _scan.baggage_key(value)
    assert found is None or found == baggage_key(value), value


@needs_compiled
@pytest.mark.parametrize("case", BAGGAGE_CASES, ids=lambda case: case.joined[:40])
def test_the_compiled_key_is_baggage_keys(case: Case) -> None:
    joined = case.joined.encode("utf-8")
    for value in variants(joined):
        same_key(value)


@needs_compiled
def test_the_compiled_key_answers_the_common_cases_itself() -> None:
    assert _scan is not None
    assert _scan.baggage_key(b"sentry-trace=1, laneway-key=k1;p=1") == ("k1", False)
    assert _scan.baggage_key(b"a=1") == (None, False)
    assert _scan.baggage_key(b"xlaneway-key=k1") == (None, False)
    assert _scan.baggage_key(b"laneway-key= +k1+ ,b=2") == ("k1", False)
    for other in (b"laneway-key=k%31", b"laneway-key=a,laneway-key=b", "laneway-key=é".encode()):
        assert _scan.baggage_key(other) is None  # baggage_key decides those
    with pytest.raises(TypeError):
        _scan.baggage_key("laneway-key=k1")  # type: ignore[arg-type]


MEMBERS = st.lists(st.one_of(
    st.sampled_from(["laneway-key=k1", "laneway-key = k2 ;p=1", "laneway-key=", "a=1",
                     "xlaneway-key=k3", "laneway-keyx=k4", " laneway-key=+k5+", "b=laneway-key",
                     "laneway-key=k%36", "laneway-key\t=\tk7", "laneway-key"]),
    st.text(alphabet=" \t,;=+%abk-\x80", max_size=6)), max_size=4)


@needs_compiled
@settings(max_examples=3000, deadline=None)
@given(MEMBERS, st.sampled_from([",", ", ", ",\t", ""]))
def test_generated_baggage_keys_alike(members: list[str], comma: str) -> None:
    same_key(comma.join(members).encode("utf-8"))


@needs_compiled
def test_hop_rows_of_atomic_values_are_untracked_as_they_are_recorded() -> None:
    """What `HopRecorder.record` does with each row (the collector would walk every young row
    until its first pass over it); a row holding a container stays tracked."""
    assert _scan is not None
    row = (time.time(), "".join(["trace", "x"]), "", "svc", "k1", "sb", "svc@sb#1", 200, 1.25,
           "GET", "/", "", False, None, "", None)
    assert gc.is_tracked(row)
    assert _scan.untrack(row) is row
    assert not gc.is_tracked(row)
    held = (1.0, ["captured"])  # a list is always tracked (a dict of atomic values is not)
    assert _scan.untrack(held) is held
    assert gc.is_tracked(held)
    assert _scan.untrack("not a tuple") == "not a tuple"
    rows: list[tuple[object, ...]] = []
    recorder = HopRecorder(rows.extend, 10)
    with contextlib.suppress(RuntimeError):  # no running loop for the flush timer
        recorder.record((time.time(), "".join(["t", "2"]), "", "svc", "", "baseline", "", 200,
                         0.5, "GET", "/", "", False, None, "", None))
    assert len(recorder._buffer) == 1
    assert not gc.is_tracked(recorder._buffer[0])
