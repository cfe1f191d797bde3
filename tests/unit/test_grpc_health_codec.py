"""The `health: grpc` check's pure part: the hand-coded HealthCheckRequest and
HealthCheckResponse against the real protobuf messages, and the verdict on an answer."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2
from hypothesis import given
from hypothesis import strategies as st

from laneway.runtime.local.health import (
    decode_check_response,
    encode_check_request,
    grpc_verdict,
)

GRPC_HEADERS = {":status": "200", "content-type": "application/grpc"}


def framed(message: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


@given(st.text(max_size=300))
def test_the_request_is_what_protobuf_encodes(service: str) -> None:
    expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert encode_check_request(service) == framed(expected)


@given(st.integers(min_value=0, max_value=2**31 - 1), st.binary(max_size=100))
def test_the_status_is_read_past_fields_it_does_not_know(status: int, blob: bytes) -> None:
    message = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    # A newer server may add fields: wire types 0, 1, 2 and 5 around the status are skipped.
    unknown = (b"\x10\x96\x01" + b"\x19" + b"\x00" * 8 + b"\x22" + bytes([len(blob)]) + blob
               + b"\x2d\x01\x02\x03\x04")
    assert decode_check_response(framed(unknown + message)) == status
    assert decode_check_response(framed(message + unknown)) == status


def test_an_empty_response_is_unknown() -> None:
    # proto3 leaves a zero enum out: UNKNOWN is an empty message.
    assert health_pb2.HealthCheckResponse(status=0).SerializeToString() == b""
    assert decode_check_response(framed(b"")) == 0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x00\x00\x00", "less than a gRPC message's 5-byte prefix"),
        (framed(b"\x08\x01", flag=1), "a compressed message"),
        (b"\x00\x00\x00\x00\x05\x08\x01", "announces 5 bytes, the body has 2"),
        (framed(b"\x08"), "a truncated varint"),
        (framed(b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), "a truncated varint"),
        (framed(b"\x12\x05ab"), "a truncated field"),
        (framed(b"\x0b"), "wire type 3"),
    ],
)
def test_what_is_not_a_health_check_response_is_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        decode_check_response(data)


def serving(status: int) -> bytes:
    return framed(health_pb2.HealthCheckResponse(status=status).SerializeToString())


@pytest.mark.parametrize(
    ("service", "headers", "body", "trailers", "expected"),
    [
        ("", GRPC_HEADERS, serving(1), {"grpc-status": "0"}, None),
        ("shop.Pricing", {**GRPC_HEADERS, "content-type": "application/grpc+proto"},
         serving(1), {"grpc-status": "0"}, None),
        ("shop.Pricing", GRPC_HEADERS, serving(2), {"grpc-status": "0"},
         "grpc.health.v1.Health/Check for 'shop.Pricing' answered NOT_SERVING"),
        ("", GRPC_HEADERS, serving(0), {"grpc-status": "0"},
         "grpc.health.v1.Health/Check answered UNKNOWN"),
        ("", GRPC_HEADERS, serving(3), {"grpc-status": "0"},
         "grpc.health.v1.Health/Check answered SERVICE_UNKNOWN"),
        ("", GRPC_HEADERS, serving(9), {"grpc-status": "0"},
         "grpc.health.v1.Health/Check answered status 9"),
        # Trailers-Only: the status in the only header block there is.
        ("", {**GRPC_HEADERS, "grpc-status": "14", "grpc-message": "going%20away"}, b"", {},
         "grpc.health.v1.Health/Check answered grpc-status 14 (UNAVAILABLE): going away"),
        ("", GRPC_HEADERS, b"", {"grpc-status": "99"},
         "grpc.health.v1.Health/Check answered grpc-status 99 (unknown code)"),
        ("", GRPC_HEADERS, b"", {"grpc-status": "OK"},
         "grpc.health.v1.Health/Check: the answer has an invalid grpc-status 'OK'"),
        ("", GRPC_HEADERS, serving(1), {},
         "grpc.health.v1.Health/Check: the answer has no grpc-status"),
        ("", GRPC_HEADERS, b"\x00\x00", {"grpc-status": "0"},
         "grpc.health.v1.Health/Check: the answer is not a HealthCheckResponse (2 bytes"),
        ("", {":status": "404", "content-type": "text/plain"}, b"", {},
         "grpc.health.v1.Health/Check answered HTTP status 404, not a gRPC answer"),
        ("", {":status": "200", "content-type": "text/html"}, b"", {},
         "answered content-type text/html, not application/grpc: not a gRPC server"),
    ],
)
def test_the_verdict_names_the_call_and_what_it_answered(
        service: str, headers: dict[str, str], body: bytes, trailers: dict[str, str],
        expected: str | None) -> None:
    verdict = grpc_verdict(service, headers, body, trailers)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None
        assert expected in verdict
