"""Health checks against a process's internal port: a TCP connect, an HTTP GET of a path, or a
gRPC `grpc.health.v1.Health/Check` call.

The supervisor (`process.py`) calls `check_health` until a process is healthy; an answer other
than None is a sentence for the unit's status message. The gRPC check speaks HTTP/2 with prior
knowledge through h2 (sans-IO, the router's HTTP/2 state machine) and codes the two one-field
protobuf messages by hand, so that laneway needs no grpcio at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from laneway.core.grpc import format_grpc_timeout, grpc_code_name

__all__ = ["check_health", "decode_check_response", "encode_check_request", "grpc_verdict"]

HEALTH_CHECK = "grpc.health.v1.Health/Check"
# A HealthCheckResponse is 7 bytes framed; headers, trailers and settings add a few hundred.
# More than this is not a health service answering.
MAX_ANSWER_BYTES = 64 * 1024
SERVING = 1
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def check_health(port: int, health: str, timeout: float = 1.0) -> str | None:
    """None when healthy, otherwise what went wrong (shown in status messages).

    `health` is `tcp`, an HTTP path (`/healthz`), `grpc` (the server's overall status) or
    `grpc:NAME` (the status of the gRPC service NAME)."""
    if health == "grpc" or health.startswith("grpc:"):
        return await _check_grpc(port, health.partition(":")[2], timeout)
    connected = await _connect(port, timeout)
    if isinstance(connected, str):
        return connected
    reader, writer = connected
    try:
        if health == "tcp":
            return None
        writer.write(
            f"GET {health} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nuser-agent: laneway-health\r\n"
            "connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return f"GET {health}: not an HTTP answer"
        status = int(parts[1])
        if 200 <= status < 400:
            return None
        return f"GET {health} answered {status}"
    except TimeoutError:
        return f"GET {health}: no answer within {timeout:g}s"
    except OSError as exc:
        return f"GET {health}: {exc.strerror or exc}"
    except RuntimeError as exc:
        # Under uvloop, writing to a socket the peer reset raises RuntimeError, not OSError:
        # an unhealthy answer, never a reason for the supervisor to die.
        return f"GET {health}: {exc}"
    finally:
        await _close(writer)


async def _connect(port: int, timeout: float) -> _Streams | str:
    try:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except TimeoutError:
        return f"connect to port {port} timed out"
    except OSError as exc:
        return f"port {port}: {exc.strerror or exc}"
    except RuntimeError as exc:  # uvloop raises it for a socket reset under its feet
        return f"port {port}: {exc}"


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
        await writer.wait_closed()


# gRPC: the pure part

def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("a truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode_check_request(service: str) -> bytes:
    """HealthCheckRequest{service} as one length-prefixed gRPC message (uncompressed)."""
    raw = service.encode()
    body = b"\x0a" + _varint(len(raw)) + raw if raw else b""  # field 1, length-delimited
    return b"\x00" + len(body).to_bytes(4, "big") + body


def decode_check_response(framed: bytes) -> int:
    """The `status` of one length-prefixed HealthCheckResponse; ValueError when it is not one.
    Fields other than `status` are skipped, as protobuf readers do."""
    if len(framed) < 5:
        raise ValueError(f"{len(framed)} bytes, less than a gRPC message's 5-byte prefix")
    if framed[0] != 0:
        raise ValueError("a compressed message, although the check offered no compression")
    length = int.from_bytes(framed[1:5], "big")
    message = framed[5:]
    if len(message) != length:
        raise ValueError(f"the prefix announces {length} bytes, the body has {len(message)}")
    status, pos = 0, 0  # proto3: an absent enum is its zero value, UNKNOWN
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(message, pos)
            if number == 1:
                status = value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            size, pos = _read_varint(message, pos)
            pos += size
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"protobuf wire type {wire} is not one a message holds")
        if pos > len(message):
            raise ValueError("a truncated field")
    return status


@dataclass
class _Answer:
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)


def grpc_verdict(service: str, headers: dict[str, str], body: bytes,
                 trailers: dict[str, str]) -> str | None:
    """None when a complete Health/Check answer says SERVING, otherwise why not. `headers`
    hold the grpc-status of a Trailers-Only answer (an error with no message)."""
    call = HEALTH_CHECK + (f" for {service!r}" if service else "")
    status = headers.get(":status", "")
    if status != "200":
        return f"{call} answered HTTP status {status or '(none)'}, not a gRPC answer"
    content_type = headers.get("content-type", "")
    if not content_type.startswith("application/grpc"):
        return (f"{call} answered content-type {content_type or '(none)'}, not "
                "application/grpc: not a gRPC server")
    raw_code = trailers.get("grpc-status", headers.get("grpc-status"))
    if raw_code is None:
        return f"{call}: the answer has no grpc-status"
    if not raw_code.isdigit():
        return f"{call}: the answer has an invalid grpc-status {raw_code[:20]!r}"
    code = int(raw_code)
    if code == 0:
        try:
            serving = decode_check_response(body)
        except ValueError as exc:
            return f"{call}: the answer is not a HealthCheckResponse ({exc})"
        if serving == SERVING:
            return None
        return f"{call} answered {SERVING_STATUS.get(serving, f'status {serving}')}"
    named = f"grpc-status {code} ({grpc_code_name(code, 'unknown code')})"
    if code == 5:  # how grpcio's HealthServicer answers Check for a name it was never given
        if service:
            return (f"{call} answered {named}: an unknown service to the server's health "
                    f"service; set its status there or correct health: grpc:{service}")
        return (f"{call} answered {named}: the server's health service reports no overall "
                "status (''); set one, or name a service with health: grpc:NAME")
    if code == 12:
        return (f"{call} answered {named}: the server has no health service; register "
                "grpc_health.v1 (grpcio-health-checking) or use health: tcp")
    message = unquote(trailers.get("grpc-message", headers.get("grpc-message", "")))
    return f"{call} answered {named}" + (f": {message[:200]}" if message else "")


def _header_dict(pairs: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        out[key.lower()] = value.decode("latin-1") if isinstance(value, bytes) else value
    return out


# gRPC: the I/O shell

async def _check_grpc(port: int, service: str, timeout: float) -> str | None:
    call = HEALTH_CHECK + (f" for {service!r}" if service else "")
    deadline = asyncio.get_running_loop().time() + timeout
    connected = await _connect(port, timeout)
    if isinstance(connected, str):
        return connected
    reader, writer = connected
    try:
        # One deadline for the whole exchange: a server that accepts and never answers, or
        # trickles bytes, costs the supervisor at most `timeout`.
        async with asyncio.timeout_at(deadline):
            answer = await _exchange(reader, writer, port, service, timeout, call)
    except TimeoutError:
        return f"{call}: no answer within {timeout:g}s"
    except OSError as exc:
        return f"{call}: {exc.strerror or exc}"
    except RuntimeError as exc:  # uvloop, for a socket the peer reset
        return f"{call}: {exc}"
    finally:
        await _close(writer)
    if isinstance(answer, str):
        return answer
    return grpc_verdict(service, answer.headers, answer.body, answer.trailers)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int,
                    service: str, timeout: float, call: str) -> _Answer | str:
    not_h2 = f"port {port} does not speak HTTP/2 (an HTTP/1.1 server?)"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", f"/{HEALTH_CHECK}".encode()),
        (b":authority", f"127.0.0.1:{port}".encode()), (b"content-type", b"application/grpc"),
        (b"te", b"trailers"), (b"grpc-timeout", format_grpc_timeout(timeout)),
        (b"user-agent", b"laneway-health"),
    ])
    conn.send_data(stream, encode_check_request(service), end_stream=True)
    writer.write(conn.data_to_send())
    await writer.drain()
    answer = _Answer()
    received = 0
    spoke_h2 = False  # the server's SETTINGS arrived
    while True:
        try:
            data = await reader.read(16384)
        except ConnectionResetError:
            if not spoke_h2:
                return not_h2
            raise
        if not data:
            # An HTTP/2 server sends its SETTINGS first; an HTTP/1.1 one often closes on the
            # preface (`PRI * HTTP/2.0`) without a word, or resets it.
            if not spoke_h2:
                return not_h2
            return f"{call}: the server closed the connection before the answer ended"
        if not received and data.startswith(b"HTTP/"):
            return not_h2
        received += len(data)
        if received > MAX_ANSWER_BYTES:
            return (f"{call}: the answer passed {MAX_ANSWER_BYTES // 1024} KiB; not a "
                    "health service")
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            return not_h2 if not spoke_h2 else f"{call}: HTTP/2 protocol error: {exc}"
        # The answer fits in the initial flow-control window (MAX_ANSWER_BYTES), so no
        # WINDOW_UPDATE is owed; settings acknowledgements and ping answers are.
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                spoke_h2 = True
            elif getattr(event, "stream_id", stream) != stream:
                continue
            elif isinstance(event, h2.events.ResponseReceived):
                answer.headers = _header_dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                answer.body += event.data or b""
            elif isinstance(event, h2.events.TrailersReceived):
                answer.trailers = _header_dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                return answer
            elif isinstance(event, h2.events.StreamReset):
                return (f"{call}: the server reset the stream (HTTP/2 error code "
                        f"{event.error_code})")
            if isinstance(event, h2.events.ConnectionTerminated):
                return (f"{call}: the server closed the connection (GOAWAY, HTTP/2 error "
                        f"code {event.error_code})")
        pending = conn.data_to_send()
        if pending:
            writer.write(pending)
            await writer.drain()
