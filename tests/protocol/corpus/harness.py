"""The conformance corpus as data, and the runner that plays a case against a proxy.

A `Case` is: what each client sends (raw bytes, possibly split, dripped or interleaved with pauses
and reads), what the upstream's connections answer (a `rawupstream` script), and what must come
out at both ends: the responses each client gets and whether its connection ends, and the exact
requests the upstream receives (request line, every header but the proxy's own `via`, decoded
body), the bytes left over after them, how many connections it was opened and which of them the
proxy closed.

Cases are data so that the pytest modules (tests/protocol/corpus/test_*.py) and
bench/conformance.py (laneway against HAProxy) play the same bytes. `run_case` returns an
`Outcome`: the failures (empty when the proxy conforms) and a short observation of what happened,
which the bench compares across proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from tests.protocol.corpus.rawupstream import (
    DEFAULT_SCRIPT,
    FramingError,
    ParsedRequest,
    ParsedResponse,
    RawUpstream,
    UAction,
    parse_response,
)

__all__ = [
    "BROKEN_KEY",
    "FORK_KEY",
    "CAction",
    "Case",
    "Client",
    "Connect",
    "Drip",
    "HalfClose",
    "Outcome",
    "Pause",
    "Read",
    "ReadRaw",
    "Resp",
    "Stall",
    "Target",
    "U",
    "UReq",
    "Write",
    "WriteParts",
    "laneway",
    "run_case",
    "simple",
]

FORK_KEY = "corpuskey01"  # routed to the fork upstream (sandbox sb-k)
BROKEN_KEY = "brokenkey01"  # a fork that is not ready: 503
SERVED_BY_FORK = b"svc@sb-k"
PROXY_ADDED = frozenset({b"via"})  # headers a proxy may add that cases do not list

# client actions


@dataclass(frozen=True)
class Connect:
    """Open the connection now (otherwise the first action that needs it does)."""

    rcvbuf: int = 0  # SO_RCVBUF, to make a slow reader's window small


@dataclass(frozen=True)
class Write:
    data: bytes


@dataclass(frozen=True)
class WriteParts:
    """Write `parts` one after the other, `gap` seconds apart (split at chosen boundaries)."""

    parts: tuple[bytes, ...]
    gap: float = 0.02


@dataclass(frozen=True)
class Drip:
    """Write `data` `size` bytes at a time, `gap` seconds apart; stop as soon as the proxy
    answers or closes (a slowloris head, a slow but steady upload)."""

    data: bytes
    gap: float = 0.1
    size: int = 1


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Read:
    """Wait for `count` more complete responses. `head`: they answer HEAD requests. `rate`: read
    at most that many bytes per second (a slow reader), pausing the socket in between."""

    count: int = 1
    head: bool = False
    rate: int = 0


@dataclass(frozen=True)
class ReadRaw:
    """Wait for `size` more raw bytes after a 101 (a tunnel)."""

    size: int


@dataclass(frozen=True)
class Stall:
    """Stop reading (the socket's receive window fills) until the next Read or ReadRaw."""


@dataclass(frozen=True)
class HalfClose:
    """Shut down the client's sending side (TCP FIN) and keep reading."""


CAction = Connect | Write | WriteParts | Drip | Pause | Read | ReadRaw | Stall | HalfClose


# expectations


@dataclass(frozen=True)
class Resp:
    """One response the client must get."""

    status: int | tuple[int, ...]
    body: bytes | None = None  # exact, decoded
    headers: tuple[tuple[bytes, bytes | None], ...] = ()  # name -> exact value (None: present)
    absent: tuple[bytes, ...] = ()
    # A response the router writes itself: it carries `laneway-error` and a JSON body whose text
    # matches this regex (case-insensitive). Checked against laneway only.
    error: str | None = None
    req_id: bytes | None = None  # the `x-req-id` the upstream echoed: this client's request
    complete: bool = True  # False: the connection ended inside the body

    def statuses(self) -> tuple[int, ...]:
        return self.status if isinstance(self.status, tuple) else (self.status,)


@dataclass(frozen=True)
class UReq:
    """One request the upstream must receive."""

    line: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""


def U(line: bytes, *headers: bytes, body: bytes = b"") -> UReq:
    """`U(b"GET / HTTP/1.1", b"host: x")`: an expected upstream request."""
    pairs = []
    for h in headers:
        name, _, value = h.partition(b":")
        pairs.append((name.strip().lower(), value.strip()))
    return UReq(line, tuple(pairs), body)


@dataclass(frozen=True)
class Client:
    actions: tuple[CAction, ...]
    responses: tuple[Resp, ...] | None = ()  # every response, in order (None: not checked)
    closed: bool | None = False  # the proxy ends the connection (False: it stays open)
    within: float = 5.0  # seconds allowed for that close, after the last action
    tunnel: bytes | None = None  # every raw byte after a 101
    read_timeout: float = 5.0


@dataclass(frozen=True)
class Case:
    name: str
    why: str
    clients: tuple[Client, ...]
    upstream: tuple[UReq, ...] | None  # every complete request the upstream receives, in order
    fork: tuple[UReq, ...] | None = ()  # the same for the fork's upstream
    script: tuple[UAction, ...] = DEFAULT_SCRIPT
    scripts: tuple[tuple[UAction, ...], ...] = ()  # per upstream connection, then `script`
    upstream_rest: bytes | None = b""  # bytes after the last complete request, per connection
    upstream_conns: int | None = None
    upstream_closed: tuple[int, ...] = ()  # upstream connections the proxy must have closed
    upstream_all_closed: bool = False  # every upstream connection opened, closed by the proxy
    any_order: bool = False  # upstream requests of several clients: compared as a multiset
    settings: tuple[tuple[str, float], ...] = ()  # RouterSettings fields
    deadline: float = 30.0

    def setting(self, name: str, default: float) -> float:
        return dict(self.settings).get(name, default)


def simple(name: str, why: str, data: bytes, responses: tuple[Resp, ...],
           upstream: tuple[UReq, ...] | None, *, closed: bool | None = False,
           head: bool = False, **kw: object) -> Case:
    """A one-client case: write `data`, read the responses that are not errors, then check."""
    reads = sum(1 for r in responses if r.error is None)
    actions: tuple[CAction, ...] = (Write(data),)
    if reads:
        actions += (Read(reads, head=head),)
    return Case(name, why, (Client(actions, responses, closed),), upstream,
                **kw)  # type: ignore[arg-type]


# targets


@dataclass(frozen=True)
class Target:
    """A proxy under test: `open(case, base_port, fork_port)` yields the port clients use."""

    name: str
    open: Callable[[Case, int, int], AbstractAsyncContextManager[int]]

    @property
    def is_laneway(self) -> bool:
        return self.name == "laneway"


@contextlib.asynccontextmanager
async def _laneway(case: Case, base_port: int, fork_port: int) -> AsyncIterator[int]:
    from laneway.core.routes import ForkRoute, RouteTable, Upstream
    from laneway.router import Router, RouterSettings

    router = Router(RouterSettings(**dict(case.settings)))  # type: ignore[arg-type]
    port = await router.listen("svc", 0)
    router.apply(RouteTable(
        version=1,
        baseline={"svc": Upstream("127.0.0.1", base_port)},
        forks={"svc": {
            FORK_KEY: ForkRoute("svc", "sb-k", Upstream("127.0.0.1", fork_port), True,
                                fork="svc@sb-k#1"),
            BROKEN_KEY: ForkRoute("svc", "sb-b", None, False,
                                  "fork svc@sb-b is crashed: exited with code 1"),
        }},
    ))
    try:
        yield port
    finally:
        await router.close()


laneway = Target("laneway", _laneway)


# the client side


class _ClientConn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.transport: asyncio.Transport | None = None
        self._wake = asyncio.Event()
        self.received_total = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.received_total += len(data)
        self._wake.set()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.reset = exc is not None
        self._wake.set()

    async def wait(self, timeout: float) -> bool:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def write(self, data: bytes) -> bool:
        if self.transport is None or self.transport.is_closing() or self.eof:
            return False
        try:
            self.transport.write(data)
        except (ConnectionError, RuntimeError):
            return False
        return True


@dataclass
class _ClientRun:
    spec: Client
    port: int
    conn: _ClientConn | None = None
    responses: list[ParsedResponse] = field(default_factory=list)
    tunnel: bytearray | None = None
    notes: list[str] = field(default_factory=list)
    closed: bool = False
    close_after: float = 0.0

    async def connect(self, rcvbuf: int = 0) -> _ClientConn:
        if self.conn is None:
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", self.port))
            _, self.conn = await loop.create_connection(_ClientConn, sock=sock)
        return self.conn

    def _parse(self, head: bool, final: bool) -> bool:
        """Move one response from the buffer to `responses`; False if none is complete."""
        conn = self.conn
        assert conn is not None
        if self.tunnel is not None:
            self.tunnel += conn.buf
            conn.buf.clear()
            return False
        if not conn.buf:
            return False
        try:
            got = parse_response(bytes(conn.buf), head_request=head, eof=final and conn.eof)
        except FramingError as exc:
            self.notes.append(f"ill-framed response bytes: {exc}: {bytes(conn.buf[:120])!r}")
            conn.buf.clear()
            return False
        if got is None:
            return False
        resp, used = got
        del conn.buf[:used]
        self.responses.append(resp)
        if resp.status == 101:
            self.tunnel = bytearray(conn.buf)
            conn.buf.clear()
        return True

    def _unstall(self, conn: _ClientConn) -> None:
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.resume_reading()

    async def _read(self, action: Read) -> bool:
        conn = await self.connect()
        self._unstall(conn)
        try:
            return await self._read_some(conn, action)
        finally:
            if action.rate and conn.transport is not None and not conn.transport.is_closing():
                conn.transport.resume_reading()

    async def _read_some(self, conn: _ClientConn, action: Read) -> bool:
        want = len(self.responses) + action.count
        deadline = time.monotonic() + self.spec.read_timeout
        while len(self.responses) < want:
            if self._parse(action.head, final=conn.eof):
                continue
            if conn.eof or self.tunnel is not None:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                self.notes.append(f"no response #{len(self.responses) + 1} within "
                                  f"{self.spec.read_timeout:g}s")
                return False
            if action.rate and conn.transport is not None:
                # A slow reader: let the kernel buffer fill, take it in at `rate` bytes/s.
                before = conn.received_total
                conn.transport.resume_reading()
                await conn.wait(min(left, 0.05))
                conn.transport.pause_reading()
                got = conn.received_total - before
                await asyncio.sleep(got / action.rate)
                if got:
                    deadline = time.monotonic() + self.spec.read_timeout
                continue
            await conn.wait(left)
        return True

    async def _read_raw(self, size: int) -> bool:
        conn = await self.connect()
        self._unstall(conn)
        deadline = time.monotonic() + self.spec.read_timeout
        while True:
            self._parse(False, final=False)
            if self.tunnel is not None and len(self.tunnel) >= size:
                return True
            if conn.eof:
                self.notes.append("connection ended inside the tunnel")
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                self.notes.append(f"no {size} tunnel bytes within {self.spec.read_timeout:g}s")
                return False
            await conn.wait(left)

    async def run(self) -> None:
        expected_tunnel = 0
        for action in self.spec.actions:
            if isinstance(action, Connect):
                await self.connect(action.rcvbuf)
            elif isinstance(action, Write):
                conn = await self.connect()
                if not conn.write(action.data):
                    self.notes.append("write refused: the proxy had closed")
            elif isinstance(action, WriteParts):
                conn = await self.connect()
                for part in action.parts:
                    conn.write(part)
                    await asyncio.sleep(action.gap)
            elif isinstance(action, Drip):
                conn = await self.connect()
                for i in range(0, len(action.data), action.size):
                    if conn.buf or conn.eof or not conn.write(action.data[i:i + action.size]):
                        break
                    await asyncio.sleep(action.gap)
            elif isinstance(action, Pause):
                await asyncio.sleep(action.seconds)
            elif isinstance(action, Read):
                if not await self._read(action):
                    break
            elif isinstance(action, ReadRaw):
                expected_tunnel += action.size
                if not await self._read_raw(expected_tunnel):
                    break
            elif isinstance(action, Stall):
                conn = await self.connect()
                if conn.transport is not None:
                    conn.transport.pause_reading()
            elif isinstance(action, HalfClose):
                conn = await self.connect()
                if conn.transport is not None and not conn.transport.is_closing():
                    conn.transport.write_eof()
        await self._finish()

    async def _finish(self) -> None:
        conn = await self.connect()
        self._unstall(conn)
        start = time.monotonic()
        if self.spec.closed:
            deadline = start + self.spec.within
            while not conn.eof and time.monotonic() < deadline:
                await conn.wait(deadline - time.monotonic())
        else:
            deadline = start + 0.25
            while not conn.eof and time.monotonic() < deadline:
                await conn.wait(deadline - time.monotonic())
        self.closed = conn.eof
        self.close_after = time.monotonic() - start
        while self._parse(False, final=True):
            pass
        if conn.buf and self.tunnel is None:
            self.notes.append(f"bytes that are not a complete response: {bytes(conn.buf[:120])!r}")

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()


# checking


@dataclass
class Outcome:
    failures: list[str]
    observed: str

    def __bool__(self) -> bool:
        return not self.failures


def _check_response(i: int, want: Resp, got: ParsedResponse, target: Target) -> list[str]:
    out: list[str] = []
    where = f"response #{i + 1}"
    if got.status not in want.statuses():
        out.append(f"{where}: status {got.status}, want {want.status} "
                   f"(body {got.body[:200]!r})")
        return out
    if got.complete != want.complete:
        out.append(f"{where}: complete={got.complete}, want {want.complete}")
    if want.body is not None and got.body != want.body:
        out.append(f"{where}: body {got.body[:200]!r}, want {want.body[:200]!r}")
    for name, value in want.headers:
        if name.startswith(b"laneway-") and not target.is_laneway:
            continue
        have = got.all(name)
        if not have:
            out.append(f"{where}: no {name.decode()} header")
        elif value is not None and have != [value]:
            out.append(f"{where}: {name.decode()}: {have!r}, want {value!r}")
    for name in want.absent:
        if name.startswith(b"laneway-") and not target.is_laneway:
            continue
        if got.all(name):
            out.append(f"{where}: has {name.decode()}: {got.all(name)!r}, must not")
    if want.req_id is not None and got.get(b"x-req-id") != want.req_id:
        out.append(f"{where}: x-req-id {got.get(b'x-req-id')!r}, want {want.req_id!r} "
                   "(another request's answer)")
    if got.all(b"content-length") and got.all(b"transfer-encoding"):
        out.append(f"{where}: carries both content-length and transfer-encoding")
    if want.error is not None and target.is_laneway:
        if not got.get(b"laneway-error"):
            out.append(f"{where}: no laneway-error header on the router's own response")
        try:
            doc = json.loads(got.body)
        except ValueError:
            out.append(f"{where}: body is not JSON: {got.body[:200]!r}")
        else:
            if not isinstance(doc, dict) or "error" not in doc:
                out.append(f"{where}: JSON body has no 'error': {got.body[:200]!r}")
        if not re.search(want.error, got.body.decode("utf-8", "replace"), re.IGNORECASE):
            out.append(f"{where}: body does not name the problem /{want.error}/: "
                       f"{got.body[:300]!r}")
    return out


def _check_client(n: int, run: _ClientRun, target: Target) -> list[str]:
    spec = run.spec
    out = [f"client {n}: {note}" for note in run.notes]
    if spec.responses is not None:
        if len(run.responses) != len(spec.responses):
            out.append(f"client {n}: {len(run.responses)} responses "
                       f"{[r.status for r in run.responses]}, want {len(spec.responses)} "
                       f"{[r.status for r in spec.responses]}")
        for i, (want, got) in enumerate(zip(spec.responses, run.responses, strict=False)):
            out.extend(f"client {n}: {f}" for f in _check_response(i, want, got, target))
    if spec.closed is True and not run.closed:
        out.append(f"client {n}: connection still open {spec.within:g}s after the last action")
    if spec.closed is False and run.closed:
        out.append(f"client {n}: connection closed by the proxy, must stay open")
    if spec.tunnel is not None:
        got_tunnel = bytes(run.tunnel) if run.tunnel is not None else None
        if got_tunnel != spec.tunnel:
            out.append(f"client {n}: tunnel bytes {got_tunnel!r}, want {spec.tunnel!r}")
    return out


def _key(req: UReq) -> tuple[bytes, tuple[tuple[bytes, bytes], ...], bytes]:
    return req.line, tuple(sorted(req.headers)), req.body


def _as_ureq(req: ParsedRequest) -> UReq:
    return UReq(req.line, tuple(h for h in req.headers if h[0] not in PROXY_ADDED), req.body)


def _fmt(req: UReq) -> str:
    heads = ", ".join(f"{n.decode()}: {v.decode('latin-1')[:60]}" for n, v in req.headers)
    return f"{req.line.decode('latin-1')} [{heads}] body={req.body[:80]!r}"


def _check_upstream(label: str, want: tuple[UReq, ...] | None, up: RawUpstream, case: Case,
                    listen: bytes, want_rest: bytes | None) -> list[str]:
    out: list[str] = []
    reqs, rest, error = up.requests()
    got = [_as_ureq(r) for r in reqs]
    if error and want_rest is not None:
        out.append(f"{label} received ill-framed bytes ({error}): {rest[:160]!r}")
    if want is not None:
        want = tuple(UReq(w.line, tuple((n, v.replace(b"{listen}", listen)) for n, v in w.headers),
                          w.body) for w in want)
        a = [_key(w) for w in want]
        b = [_key(g) for g in got]
        if case.any_order:
            a, b = sorted(a), sorted(b)
        if a != b:
            out.append(f"{label} received {len(got)} requests, want {len(want)}:\n"
                       + "".join(f"    got  {_fmt(g)}\n" for g in got)
                       + "".join(f"    want {_fmt(w)}\n" for w in want))
    if want_rest is not None and rest != want_rest and not error:
        out.append(f"{label} received bytes beyond complete requests: {rest[:160]!r}, "
                   f"want {want_rest[:160]!r}")
    return out


async def run_case(case: Case, target: Target) -> Outcome:
    base = RawUpstream(case.script, case.scripts)
    fork = RawUpstream()
    await base.start()
    await fork.start()
    runs: list[_ClientRun] = []
    failures: list[str] = []
    try:
        async with target.open(case, base.port, fork.port) as port:
            runs = [_ClientRun(spec, port) for spec in case.clients]
            try:
                async with asyncio.timeout(case.deadline):
                    await asyncio.gather(*(r.run() for r in runs))
            except TimeoutError:
                failures.append(f"the case did not finish within {case.deadline:g}s")
            await asyncio.sleep(0.05)  # let the upstream see what the proxy did last
            listen = b"127.0.0.1:%d" % port
            for n, run in enumerate(runs):
                failures.extend(_check_client(n, run, target))
            failures.extend(_check_upstream("upstream", case.upstream, base, case, listen,
                                            case.upstream_rest))
            failures.extend(_check_upstream("fork upstream", case.fork, fork, case, listen,
                                            b""))
            if case.upstream_conns is not None and len(base.conns) != case.upstream_conns:
                failures.append(f"upstream saw {len(base.conns)} connections, want "
                                f"{case.upstream_conns}")
            for i in case.upstream_closed:
                if i >= len(base.conns):
                    failures.append(f"upstream connection #{i} never opened")
                elif not base.conns[i].eof:
                    failures.append(f"upstream connection #{i} still open: the proxy must "
                                    "close it")
            if case.upstream_all_closed:
                left = [c.index for c in base.conns if not c.eof]
                if left:
                    failures.append(f"upstream connections {left} still open: the proxy must "
                                    "close any connection it sent a partial request on")
            observed = _observe(runs, base, fork)
            for run in runs:
                run.close()
    finally:
        for run in runs:
            run.close()
        await base.stop()
        await fork.stop()
    return Outcome(failures, observed)


def _observe(runs: list[_ClientRun], base: RawUpstream, fork: RawUpstream) -> str:
    parts = []
    for n, run in enumerate(runs):
        statuses = ",".join(str(r.status) + ("" if r.complete else "(cut)")
                            for r in run.responses) or "none"
        parts.append(f"c{n}: {statuses} {'closed' if run.closed else 'open'}")
    for label, up in (("up", base), ("fork", fork)):
        reqs, rest, error = up.requests()
        if not reqs and not rest and label == "fork":
            continue
        lines = "; ".join(r.line.decode("latin-1")[:60] for r in reqs) or "nothing"
        extra = f" +{len(rest)}B" if rest else ""
        parts.append(f"{label}[{len(up.conns)}]: {lines}{extra}{' (ill-framed)' if error else ''}")
    return " | ".join(parts)
