"""Issue 12, item 7: malformed and abusive HTTP/2 from raw frames, against `python -m
laneway.router` in its own process (fresh per case, so its peak memory is that case's). Each
case must end the abuse (a GOAWAY with the right error, or a connection that stops being read)
with memory bounded, and leave the router serving a normal request after it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests import abusers, h2abusers
from tests.abusers import Figures, Router, Upstream, measure

BOUND_MB = 48.0  # as tests/integration/test_router_memory.py, for the same reasons
SETTLE = 0.5


@pytest.fixture(scope="module")
def abuse_upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture
def router(abuse_upstream: Upstream, tmp_path: Path) -> Iterator[Router]:
    started = Router(abuse_upstream.port, tmp_path / "router.log")
    yield started
    code = started.stop()
    assert code is None, f"the router exited ({code}):\n" + \
        started.log.read_text(errors="replace")[-3000:]


def check(case: str, figures: Figures) -> None:
    line = f"{case}: {figures.line()}"
    print(line)
    assert figures.growth < BOUND_MB, f"memory grew by more than {BOUND_MB:g} MB. {line}"
    assert figures.probe == 200, f"a normal request after the abuse was not served. {line}"


async def _case(router: Router, abuse: Callable[[], object]) -> Figures:
    return await measure(router.pid, router.port, abuse, SETTLE)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
async def test_settings_flood_never_read(router: Router) -> None:
    figures = await _case(router, lambda: h2abusers.settings_flood(router.port, 3.0))
    check("SETTINGS flood, ACKs never read", figures)


@pytest.mark.timeout(30)
async def test_ping_flood_never_read(router: Router) -> None:
    figures = await _case(router, lambda: h2abusers.ping_flood(router.port, 3.0))
    check("PING flood, answers never read", figures)


async def test_rapid_reset_is_told_to_calm_down(router: Router) -> None:
    figures = await _case(router, lambda: h2abusers.rapid_reset(router.port, 1000))
    check("rapid reset, 1000 streams", figures)
    assert figures.result["goaway"] == h2abusers.ENHANCE_YOUR_CALM


@pytest.fixture
async def black_hole() -> AsyncIterator[int]:
    """An upstream that accepts and never reads, with a small receive buffer."""
    handlers: set[asyncio.Task[None]] = set()

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writer.transport.pause_reading()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        writer.close()

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(never_read, sock=sock)
    yield int(sock.getsockname()[1])
    server.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


@pytest.mark.timeout(30)
async def test_data_beyond_the_window_is_a_flow_control_error(black_hole: int,
                                                              tmp_path: Path) -> None:
    # The upstream reads nothing: the router stops acknowledging the client's DATA, and a
    # client that sends on regardless breaks the window it was given.
    stuck = Router(black_hole, tmp_path / "router.log")
    try:
        before = abusers.rss_mb(stuck.pid)
        result = await h2abusers.window_overrun(stuck.port)
        growth = abusers.hwm_mb(stuck.pid) - before
        print(f"DATA beyond the windows: +{growth:.1f} MB; {result}")
        assert result["goaway"] == h2abusers.FLOW_CONTROL_ERROR, result
        assert growth < BOUND_MB
    finally:
        assert stuck.stop() is None


@pytest.mark.timeout(30)
async def test_a_header_block_that_never_ends(router: Router) -> None:
    figures = await _case(router, lambda: h2abusers.continuation_flood(router.port, 3.0))
    check("CONTINUATION flood", figures)
    # Cut off by a GOAWAY (the router does not read it for 3 s). What the client wrote until it
    # saw the GOAWAY includes what the loopback socket buffers took meanwhile: a few MB, more
    # when the machine is busy (it was 5.2 MB with four test workers), never a 3 s stream.
    assert figures.result["goaway"] is not None, figures.result
    assert figures.result["sent_mb"] < 50


async def test_oversized_headers_end_the_connection(router: Router) -> None:
    figures = await _case(router, lambda: h2abusers.oversized_headers(router.port))
    check("200 KB header list", figures)
    assert figures.result["goaway"] is not None


async def test_a_bad_preface_is_refused_at_once(router: Router) -> None:
    figures = await _case(router, lambda: h2abusers.bad_preface(router.port))
    check("bad preface", figures)
    assert figures.result["goaway"] == h2abusers.FRAME_SIZE_ERROR
    assert figures.result["closed_after_s"] < 2
