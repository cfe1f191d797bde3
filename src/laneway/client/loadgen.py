"""The experiment's load generator: an open-loop HTTP/1.1 client on raw asyncio streams that
sends one request template at a fixed rate to several lanes (the baseline: no key; each
sandbox: its routing key in `baggage`), interleaved in short slices (`core.loadmath`).

Why not Locust (or another well-kept tool): Locust is closed-loop (a number of users, each
waiting for its answer before the next request), so a slow target is simply sent less and its
queueing never shows; it measures from the moment a request is sent, not from when it was due;
it runs on gevent, which does not mix with the asyncio the rest of laneway uses; and its
per-request overhead is high on a 2-core machine that also runs the services under test. What
an experiment needs is small: one template, a fixed schedule, per-slice figures.

What makes the figures honest:
- every latency counts from the request's *scheduled* time (`perf_counter`), so a target that
  stalls shows its queueing, and so does this generator when it falls behind (its own lag is
  reported: `overhead`);
- a request never waits behind a slow one on a busy connection: when no idle connection is
  free, a new one is opened (up to `max_connections`, then it waits, and the wait counts);
- bounded in count (the spec's rate x duration, capped) and in time (every request has a
  deadline from its schedule), and only loopback or the project's own hosts are targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from laneway.core.baggage import baggage_value
from laneway.core.loadmath import percentile, send_offsets, slice_schedule

__all__ = [
    "LoadError",
    "LoadRequest",
    "LoadResult",
    "SliceResult",
    "calibrate",
    "check_target",
    "run_load",
]

HEAD_LIMIT = 64 * 1024
BODY_LIMIT = 16 * 1024 * 1024
CONNECT_TIMEOUT = 5.0


class LoadError(Exception):
    """The load step cannot run as asked (a target that is not ours, a refused connection on
    every request): a message for the user."""


@dataclass(frozen=True, slots=True)
class LoadRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    def encode(self, routing_key: str | None) -> bytes:
        parts = urlsplit(self.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{self.method} {target} HTTP/1.1", f"host: {parts.netloc}",
                 "user-agent: laneway-loadgen"]
        for name, value in self.headers:
            if name.lower() not in ("host", "content-length", "baggage"):
                lines.append(f"{name}: {value}")
        if routing_key:
            lines.append(f"baggage: {baggage_value(routing_key)}")
        if self.body is not None:
            lines.append(f"content-length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (self.body or b"")


def check_target(url: str, own_hosts: Iterable[str]) -> None:
    """Refuse a URL that is neither loopback nor one of the project's own hosts (the services'
    public addresses): an experiment must not become a load test of someone else's site."""
    host = urlsplit(url).hostname or ""
    if host in set(own_hosts) or host == "localhost":
        return
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return
    raise LoadError(f"load.request: {host or url!r} is not one of this environment's hosts "
                    "(its services' addresses) nor loopback; the load step only sends to "
                    "those")


@dataclass(slots=True)
class SliceResult:
    lane: str
    round: int
    position: int  # where in its round it came
    start_s: float  # from the load step's start
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def fig(q: float) -> float | None:
            value = percentile(self.latencies_ms, q)
            return None if value is None else round(value, 2)
        return {"lane": self.lane, "round": self.round, "position": self.position,
                "start_s": round(self.start_s, 3), "requests": len(self.latencies_ms),
                "errors": self.errors, "p50_ms": fig(50), "p95_ms": fig(95), "p99_ms": fig(99),
                "statuses": dict(sorted(self.statuses.items()))}


@dataclass(slots=True)
class LoadResult:
    slices: list[SliceResult]
    lag_ms: list[float]  # how late each request was sent after its scheduled time
    connections_opened: int = 0
    duration_s: float = 0.0

    def lane_rounds(self, lane: str) -> list[list[float]]:
        """The lane's latencies, round by round (`core.loadmath.evaluate_budget`)."""
        rounds: dict[int, list[float]] = {}
        for part in self.slices:
            if part.lane == lane:
                rounds.setdefault(part.round, []).extend(part.latencies_ms)
        return [rounds[r] for r in sorted(rounds)]

    def lane_errors(self, lane: str) -> int:
        return sum(p.errors for p in self.slices if p.lane == lane)

    def lane_statuses(self, lane: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in self.slices:
            if part.lane == lane:
                for status, n in part.statuses.items():
                    out[status] = out.get(status, 0) + n
        return dict(sorted(out.items()))

    def overhead(self) -> dict[str, Any]:
        """The generator's own share of the figures: how late it sent (scheduling lag)."""
        def fig(q: float) -> float | None:
            value = percentile(self.lag_ms, q)
            return None if value is None else round(value, 3)
        return {"send_lag_p50_ms": fig(50), "send_lag_p99_ms": fig(99),
                "send_lag_max_ms": round(max(self.lag_ms), 3) if self.lag_ms else None,
                "connections_opened": self.connections_opened}


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class _Pool:
    """Idle keep-alive connections to one address; a new one when none is idle (bounded)."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[_Connection] = []
        self.open = 0
        self.opened = 0
        self.closing: list[asyncio.StreamWriter] = []  # closed, not yet gone: awaited at the end
        self._freed = asyncio.Condition()

    async def acquire(self) -> tuple[_Connection, bool]:
        """(a connection, whether it was idle before: a reused one may have been closed by
        the server meanwhile)."""
        async with self._freed:
            while not self.idle and self.open >= self.limit:
                await self._freed.wait()
            if self.idle:
                return self.idle.pop(), True
            self.open += 1
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=HEAD_LIMIT),
                CONNECT_TIMEOUT)
        except BaseException:
            await self.discard(None)
            raise
        self.opened += 1
        return _Connection(reader, writer), False

    async def release(self, conn: _Connection) -> None:
        async with self._freed:
            self.idle.append(conn)
            self._freed.notify()

    async def discard(self, conn: _Connection | None) -> None:
        if conn is not None:
            conn.close()
            self.closing.append(conn.writer)
        async with self._freed:
            self.open -= 1
            self._freed.notify()

    async def close(self) -> None:
        """Close every connection, and wait (briefly) until they are gone."""
        for conn in self.idle:
            conn.close()
            self.closing.append(conn.writer)
        self.idle.clear()
        closing, self.closing = self.closing, []
        if closing:
            await asyncio.wait([asyncio.ensure_future(_closed(w)) for w in closing],
                               timeout=1.0)


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        await writer.wait_closed()


async def _exchange(conn: _Connection, data: bytes, method: str) -> tuple[int, bool]:
    """Send one request and read its whole answer: (status, whether the connection can be
    used again)."""
    conn.writer.write(data)
    await conn.writer.drain()
    head = await conn.reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise LoadError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    status = int(parts[1])
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            fields[name.strip().lower()] = value.strip()
    reusable = fields.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
    if 100 <= status < 200:  # an interim answer (never asked for: no `Expect`): drop it all
        return status, False
    if method == "HEAD" or status in (204, 304):
        return status, reusable
    if "chunked" in fields.get("transfer-encoding", "").lower():
        while True:
            size_line = await conn.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # The trailer section: lines until an empty one.
                while (await conn.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return status, reusable
            await conn.reader.readexactly(size + 2)
    if "content-length" in fields:
        length = int(fields["content-length"])
        if length > BODY_LIMIT:
            raise LoadError(f"an answer of {length} bytes is more than the load step reads")
        await conn.reader.readexactly(length)
        return status, reusable
    await conn.reader.read(BODY_LIMIT)  # the body ends with the connection
    return status, False


async def _one(pool: _Pool, data: bytes, method: str, due: float, timeout: float,
               into: SliceResult) -> None:
    """One request, due at `due` (perf_counter): its latency from then, success or not."""
    status = 0
    try:
        async with asyncio.timeout(max(0.001, due + timeout - time.perf_counter())):
            for attempt in (1, 2):
                conn, reused = await pool.acquire()
                try:
                    status, reusable = await _exchange(conn, data, method)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    await pool.discard(conn)
                    # A kept-alive connection the server closed meanwhile: once more, anew.
                    if reused and attempt == 1 and (not isinstance(
                            exc, asyncio.IncompleteReadError) or not exc.partial):
                        continue
                    raise
                except BaseException:
                    await pool.discard(conn)
                    raise
                if reusable:
                    await pool.release(conn)
                else:
                    await pool.discard(conn)
                break
    except TimeoutError:
        status = -1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, LoadError,
            ValueError):
        status = 0
    into.latencies_ms.append((time.perf_counter() - due) * 1000)
    name = str(status) if status > 0 else "timeout" if status else "failed"
    into.statuses[name] = into.statuses.get(name, 0) + 1
    if not 200 <= status < 400:
        into.errors += 1


async def run_load(request: LoadRequest, lanes: Mapping[str, str | None], *, rate: float,
                   rounds: int, slice_s: float = 1.0, timeout_s: float = 10.0,
                   max_connections: int = 256,
                   progress: Callable[[int, int], None] | None = None) -> LoadResult:
    """Send `request` to every lane (name -> routing key; None: the baseline) at `rate` per
    second, in slices of `slice_s`, `rounds` rounds of one slice per lane in rotated order.
    `progress(slices done, slices in all)` after each slice. Cancelled, every request in
    flight is dropped and every connection closed."""
    names = list(lanes)
    schedule = slice_schedule(names, rounds)
    payloads = {lane: request.encode(key) for lane, key in lanes.items()}
    pool = _Pool(request.host, request.port, max_connections)
    result = LoadResult([], [])
    tasks: set[asyncio.Task[None]] = set()
    total = len(schedule) * len(names)
    begin = time.perf_counter() + 0.02
    try:
        for r, order in enumerate(schedule):
            offsets = send_offsets(rate, slice_s, r)  # every lane's r-th slice
            for pos, lane in enumerate(order):
                start = begin + (r * len(order) + pos) * slice_s
                part = SliceResult(lane, r, pos, start - begin)
                result.slices.append(part)
                for offset in offsets:
                    due = start + offset
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    result.lag_ms.append(max(0.0, time.perf_counter() - due) * 1000)
                    task = asyncio.get_running_loop().create_task(
                        _one(pool, payloads[lane], request.method, due, timeout_s, part),
                        name=f"laneway-load-{lane}-{r}")
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if progress is not None:
                    progress(len(result.slices), total)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()
    result.connections_opened = pool.opened
    result.duration_s = round(time.perf_counter() - begin, 3)
    sent = [p for p in result.slices if p.statuses]  # at a low rate a slice may have none
    if sent and all(p.statuses.keys() == {"failed"} for p in sent):
        raise LoadError(f"{request.method} {request.url}: no request got an answer (is the "
                        f"service up? `laneway status`)")
    return result


async def calibrate(rate: float, seconds: float = 0.5) -> dict[str, Any]:
    """The generator's floor: the same sending, at `rate`, against a trivial server in this
    process that answers at once. Its p50/p99 bound what the generator itself adds (an upper
    bound: the server shares the event loop)."""
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        found = await run_load(LoadRequest("GET", f"http://127.0.0.1:{port}/"), {"floor": None},
                               rate=min(rate, 500.0), rounds=1, slice_s=seconds, timeout_s=5)
    finally:
        server.close()
        await server.wait_closed()
    latencies = [v for p in found.slices for v in p.latencies_ms]

    def fig(values: Sequence[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value, 3)
    return {"trivial_server_p50_ms": fig(latencies, 50),
            "trivial_server_p99_ms": fig(latencies, 99), "requests": len(latencies)}
