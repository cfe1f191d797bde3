"""Abusive HTTP/2 clients built from raw frames (hyperframe + hpack, so that nothing checks what
they send): floods, window overruns, oversized headers, rapid resets, bad prefaces. Each returns
what it saw (how much the router took, how the connection ended) for `abusers.measure`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, PROTOCOL_ERROR, FRAME_SIZE_ERROR = 0xB, 0x3, 0x1, 0x6


def request_block(encoder: Encoder, path: str = "/", extra: list[tuple[str, str]] | None = None,
                  method: str = "GET") -> bytes:
    return encoder.encode([(":method", method), (":scheme", "http"), (":path", path),
                           (":authority", "svc"), *(extra or [])])


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + SettingsFrame(0).serialize())
    return reader, writer


async def _flood(writer: asyncio.StreamWriter, frame: bytes, seconds: float) -> int:
    """Write `frame` again and again for `seconds`, never reading: how many bytes went out."""
    sent = 0
    deadline = time.monotonic() + seconds
    batch = frame * 256
    while time.monotonic() < deadline:
        writer.write(batch)
        try:
            await asyncio.wait_for(writer.drain(), max(0.01, deadline - time.monotonic()))
        except (TimeoutError, ConnectionError):
            break
        sent += len(batch)
    return sent


async def goaway_code(reader: asyncio.StreamReader, timeout: float) -> int | None:
    """Read frames until a GOAWAY (its error code) or the end of the connection (None)."""
    buffer = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
        except (TimeoutError, ConnectionError):
            return None
        if not data:
            return None
        buffer += data
        while len(buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            frame.parse_body(memoryview(buffer[9:9 + length]))
            buffer = buffer[9 + length:]
            if isinstance(frame, GoAwayFrame):
                return int(frame.error_code)
    return None


async def settings_flood(port: int, seconds: float) -> dict[str, Any]:
    """SETTINGS frames (each owed an ACK) without reading the ACKs."""
    _, writer = await _open(port)
    frame = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65535})
    sent = await _flood(writer, frame.serialize(), seconds)
    writer.transport.abort()
    return {"sent_mb": round(sent / 1e6, 1)}


async def ping_flood(port: int, seconds: float) -> dict[str, Any]:
    _, writer = await _open(port)
    sent = await _flood(writer, PingFrame(0, opaque_data=b"12345678").serialize(), seconds)
    writer.transport.abort()
    return {"sent_mb": round(sent / 1e6, 1)}


async def rapid_reset(port: int, streams: int) -> dict[str, Any]:
    """Open streams and cancel each at once (CVE-2023-44487)."""
    reader, writer = await _open(port)
    encoder = Encoder()
    out = []
    for i in range(streams):
        sid = 1 + 2 * i
        out.append(HeadersFrame(sid, request_block(encoder, "/slow?ms=2000"),
                                flags=["END_HEADERS", "END_STREAM"]).serialize())
        out.append(RstStreamFrame(sid, error_code=0x8).serialize())
    with contextlib.suppress(ConnectionError):
        writer.write(b"".join(out))
        await writer.drain()
    code = await goaway_code(reader, 5.0)
    writer.transport.abort()
    return {"goaway": code}


async def window_overrun(port: int) -> dict[str, Any]:
    """DATA far beyond the stream and connection windows the router granted."""
    reader, writer = await _open(port)
    encoder = Encoder()
    writer.write(HeadersFrame(1, request_block(encoder, "/echo", method="POST"),
                              flags=["END_HEADERS"]).serialize())
    chunk = DataFrame(1, b"x" * 16384).serialize()
    sent = 0
    with contextlib.suppress(ConnectionError, TimeoutError):
        for _ in range(2000):  # 32 MB against windows of 256 KiB (stream) and 1 MiB
            writer.write(chunk)
            sent += 16384
            await asyncio.wait_for(writer.drain(), 2.0)
    code = await goaway_code(reader, 5.0)
    writer.transport.abort()
    return {"goaway": code, "sent_mb": round(sent / 1e6, 1)}


async def continuation_flood(port: int, seconds: float) -> dict[str, Any]:
    """A HEADERS frame whose header block never ends (CONTINUATION frames, no END_HEADERS),
    sent until the router's GOAWAY arrives (or `seconds` pass)."""
    reader, writer = await _open(port)
    encoder = Encoder()
    writer.write(HeadersFrame(1, request_block(encoder)).serialize())
    frame = ContinuationFrame(1, encoder.encode([("x-filler", "y" * 8000)])).serialize()
    goaway = asyncio.ensure_future(goaway_code(reader, seconds))
    sent = 0
    with contextlib.suppress(ConnectionError):
        while not goaway.done():
            writer.write(frame * 8)
            sent += len(frame) * 8
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(writer.drain(), 0.5)
            await asyncio.sleep(0)
    code = await goaway
    writer.transport.abort()
    return {"goaway": code, "sent_mb": round(sent / 1e6, 1)}


async def oversized_headers(port: int) -> dict[str, Any]:
    """One request whose header list is 200 KB (the router's limit is 64 KiB)."""
    reader, writer = await _open(port)
    encoder = Encoder()
    block = request_block(encoder, extra=[(f"x-h{i}", "v" * 4000) for i in range(50)])
    frames = [HeadersFrame(1, block[:16384]).serialize()]
    rest = block[16384:]
    while rest:
        piece, rest = rest[:16384], rest[16384:]
        frames.append(ContinuationFrame(1, piece, flags=[] if rest else ["END_HEADERS"])
                      .serialize())
    with contextlib.suppress(ConnectionError):
        writer.write(b"".join(frames))
        await writer.drain()
    code = await goaway_code(reader, 5.0)
    writer.transport.abort()
    return {"goaway": code}


async def bad_preface(port: int) -> dict[str, Any]:
    """The preface's first line, then garbage where SETTINGS must be."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + b"\xff" * 64)
    started = time.monotonic()
    code = await goaway_code(reader, 5.0)
    writer.transport.abort()
    return {"goaway": code, "closed_after_s": round(time.monotonic() - started, 2)}
