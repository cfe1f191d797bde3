"""Issue 11, item 2 and the abuse rows: the router's memory stays bounded, and its connections
are let go, whatever its clients and upstreams do.

Everything is real: the router is `python -m laneway.router` in its own process (a fresh one per
case, so that its peak resident memory, VmHWM, is that case's), the upstream is another process
(`tests/abusers.py`), the abusive clients are sockets of this process. The router serves the
baseline while its routes feed is away. Small timeouts are set by flags (2 s each) so that the
cases fit in about a minute; assertions on them leave generous margins.

The bound on growth, 48 MB over the figure before the abuse, is loose on purpose: a router with
backpressure holds, per direction of each flow, about one high-water mark (64 KiB) and one read
(uvloop reads 256 KiB at a time), so a handful of flows cost a few MB; 3,000 open connections
cost about 25 MB of objects (measured). Without backpressure one connection reaches hundreds
of MB within seconds, so the bound separates the two with room on both sides.

The figures are printed (pytest -s shows them); bench/abuse.py prints the same cases next to
HAProxy's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests import abusers
from tests.abusers import Figures, Router, Upstream, measure

BOUND_MB = 48.0
TIMEOUT = 2.0  # every timeout of the router under test, in seconds
FLAGS = ("--upstream-timeout", f"{TIMEOUT:g}", "--client-timeout", f"{TIMEOUT:g}",
         "--keepalive-timeout", f"{TIMEOUT:g}", "--request-head-timeout", f"{TIMEOUT:g}")
SETTLE = 2.0  # seconds after the abuse before the "after" figure


@pytest.fixture(scope="module")
def abuse_upstream() -> Iterator[Upstream]:
    abusers.raise_own_fd_limit()
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture
async def start_router(abuse_upstream: Upstream,
                       tmp_path: Path) -> AsyncIterator[Callable[..., Router]]:
    started: list[Router] = []

    def start(*flags: str, nofile: int | None = None) -> Router:
        router = Router(abuse_upstream.port, tmp_path / f"router{len(started)}.log",
                        FLAGS + flags, nofile=nofile)
        started.append(router)
        return router

    yield start
    for router in started:
        code = router.stop()
        assert code is None, f"the router exited ({code}) during the test:\n" + \
            router.log.read_text(errors="replace")[-3000:]


def report(case: str, figures: Figures) -> str:
    line = f"{case}: {figures.line()}"
    print(line)
    return line


def check_common(case: str, figures: Figures) -> None:
    line = report(case, figures)
    assert figures.growth < BOUND_MB, f"memory grew by more than {BOUND_MB:g} MB. {line}"
    assert figures.probe == 200, f"a normal request after the abuse was not served. {line}"


async def test_tunnel_whose_client_does_not_read(start_router: Callable[..., Router]) -> None:
    """After `101` the upstream floods, the client reads nothing: the router must stop reading
    the upstream rather than buffer the flood."""
    router = start_router()
    figures = await measure(router.pid, router.port,
                            lambda: abusers.tunnel_reader_stalls(router.port, 3.0), SETTLE)
    check_common("tunnel, client not reading", figures)


async def test_tunnel_whose_upstream_does_not_read(start_router: Callable[..., Router]) -> None:
    """After `101` the client floods, the upstream reads nothing: the router must stop reading
    the client."""
    router = start_router()
    figures = await measure(router.pid, router.port,
                            lambda: abusers.tunnel_writer_floods(router.port, 3.0), SETTLE)
    check_common("tunnel, upstream not reading", figures)
    assert figures.result["status"] == 101


@pytest.mark.timeout(45)
async def test_pipelined_large_responses_never_read(start_router: Callable[..., Router]) -> None:
    """30 pipelined GETs of 10 MiB, none read, held past the upstream and client timeouts: the
    router buffers about a high-water mark, and lets the connection go."""
    router = start_router()
    hold = 3 * TIMEOUT
    figures = await measure(
        router.pid, router.port,
        lambda: abusers.pipelined_unread(router.port, 30, 10, hold), SETTLE)
    check_common("30 pipelined 10 MiB GETs, never read", figures)
    assert figures.result["held"] == 0, (
        f"the router still held the connection of a client that read nothing for {hold:g}s "
        f"(client timeout {TIMEOUT:g}s)")


@pytest.mark.timeout(45)
async def test_slow_readers_leave_no_paused_connection_in_the_pool(
    start_router: Callable[..., Router],
) -> None:
    """Slow readers of 10 MiB responses, each followed by unrelated requests on the pooled
    upstream connections they gave back: none of those may wait for the upstream timeout."""
    router = start_router()
    rounds, parallel = 6, 8
    figures = await measure(
        router.pid, router.port,
        lambda: abusers.slow_readers_then_others(router.port, rounds, 10, parallel=parallel),
        SETTLE)
    check_common("slow readers, then unrelated requests", figures)
    n = rounds * parallel
    assert figures.result["slow"] == {200: n}
    assert figures.result["others"] == {200: n}, (
        "unrelated requests were not all served (504: a pooled upstream connection was given "
        f"back with its reading paused): {figures.result['others']}")


@pytest.mark.timeout(50)
async def test_slow_heads_and_idle_keepalive_connections_are_dropped(
    start_router: Callable[..., Router],
) -> None:
    """1,000 connections sending their heads a line every 0.5 s, 2,000 idle keep-alive ones:
    the request-head and keep-alive timeouts let them go; memory stays bounded meanwhile."""
    router = start_router()
    seconds = 3 * TIMEOUT + 1
    figures = await measure(
        router.pid, router.port,
        lambda: abusers.slow_heads_and_idlers(router.port, 1000, 2000, seconds), SETTLE)
    check_common("1,000 slow heads and 2,000 idle keep-alive connections", figures)
    result = figures.result
    assert result["idle"].get("got 200") == 2000, result
    assert result["held_late"] <= 20, (
        f"{seconds - 1:g}s after they opened (timeouts {TIMEOUT:g}s), the router still held "
        f"{result['held_late']} of the abusive connections: {result}")
    assert not result["heads"].get("still open"), result
    assert not result["idle"].get("still open"), result
    assert figures.held_after <= 2


async def test_steady_upload_longer_than_the_upstream_timeout(
    start_router: Callable[..., Router],
) -> None:
    """A body that arrives steadily for 2.5 times the upstream timeout: each gap is short, so
    the upstream is never inactive; the answer is the upstream's, not a 504."""
    router = start_router()
    figures = await measure(
        router.pid, router.port,
        lambda: abusers.slow_upload(router.port, 2.5 * TIMEOUT), SETTLE)
    check_common("steady upload longer than the upstream timeout", figures)
    result = figures.result
    assert result["status"] == 200, f"the upload was answered {result['status']}: {result}"
    assert result["echoed"] == str(result["length"]), result


@pytest.mark.timeout(50)
async def test_connection_limit_under_a_low_fd_limit(start_router: Callable[..., Router]) -> None:
    """RLIMIT_NOFILE 512 and `--max-connections 160`: 144 idle keep-alive clients, then 400
    more. Those beyond the limit get a 503 at once (not a refusal, a reset or silence), and once
    the keep-alive timeout has closed the idle ones, a new client is served."""
    limit = 160
    router = start_router("--max-connections", str(limit), nofile=512)
    wait = TIMEOUT + 3
    figures = await measure(
        router.pid, router.port,
        lambda: abusers.beyond_the_limit(router.port, limit, 400, wait), SETTLE)
    line = report("--max-connections 160 under RLIMIT_NOFILE 512", figures)
    result = figures.result
    assert result["first"] == {200: limit - 16}, line
    extra = result["extra"]
    assert set(extra) <= {200, 503}, f"clients beyond the limit got no clear answer: {line}"
    assert extra.get(200, 0) <= 16, f"the router took more than {limit} connections: {line}"
    assert result["idle_closed_by_proxy"] == result["idle_kept"], (
        f"idle keep-alive connections outlived the keep-alive timeout ({TIMEOUT:g}s, waited "
        f"{wait:g}s): {line}")
    assert result["newcomer"] == 200, f"a new client was not served afterwards: {line}"
    assert figures.growth < BOUND_MB, line
    assert figures.probe == 200, line
