"""`FrameGuard` walks HTTP/2 frame headers across arbitrary read boundaries: it must refuse a
stream exactly when some frame announces more than the limit, wherever the reads split it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from laneway.router.h2upstream import FrameGuard

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIMIT = 16384


def frame(length: int, payload_byte: int = 0) -> bytes:
    # type 0 (DATA), no flags, stream 1; the payload is only as long as the test needs
    return length.to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01" + \
        bytes([payload_byte]) * min(length, 64)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, bool]:
    lengths = draw(st.lists(st.integers(0, 64), min_size=1, max_size=20))
    big = draw(st.one_of(st.none(), st.integers(LIMIT + 1, 2**24 - 1)))
    at = draw(st.integers(0, len(lengths)))
    data = b""
    for i, length in enumerate(lengths):
        if big is not None and i == at:
            data += big.to_bytes(3, "big") + b"\x00" * 6  # announced, never sent
            return PREFACE + data, False
        data += frame(length, i % 256)
    return PREFACE + data, True


@given(streams(), st.lists(st.integers(1, 40), max_size=50))
def test_the_verdict_does_not_depend_on_how_reads_split_the_bytes(
        case: tuple[bytes, bool], cuts: list[int]) -> None:
    data, acceptable = case
    guard = FrameGuard(len(PREFACE), LIMIT)
    pos = 0
    ok = True
    for size in [*cuts, len(data)]:
        if pos >= len(data):
            break
        ok = guard.feed(data[pos:pos + size])
        pos += size
        if not ok:
            break
    assert ok is acceptable


def test_a_frame_at_the_limit_passes_and_one_byte_more_does_not() -> None:
    assert FrameGuard(0, LIMIT).feed(LIMIT.to_bytes(3, "big") + b"\x00" * 6)
    assert not FrameGuard(0, LIMIT).feed((LIMIT + 1).to_bytes(3, "big") + b"\x00" * 6)
