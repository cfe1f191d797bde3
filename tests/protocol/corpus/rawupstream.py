"""A raw-socket upstream for the conformance corpus, and the strict HTTP/1.1 parsers it and the
corpus clients use.

`RawUpstream` records every byte it receives, per connection, whether or not its script is reading
at that moment, and runs a script of actions per connection: read one request, answer it, send
arbitrary bytes (a second response after a complete one, a 4 MB header section, a 101 then echo,
`transfer-encoding: gzip, chunked`, headers named in `Connection`), sleep, stall, close.

The parsers are deliberately strict (CRLF only, no obs-fold, one Content-Length, Transfer-Encoding
only with `chunked` last): what the router forwards must be well-framed, and a lenient parser here
would hide exactly the bugs the corpus is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_SCRIPT",
    "ByPath",
    "Close",
    "Echo",
    "FramingError",
    "Hold",
    "Loop",
    "ParsedRequest",
    "ParsedResponse",
    "RawUpstream",
    "Recv",
    "Respond",
    "Send",
    "SendSlowly",
    "Sleep",
    "UAction",
    "UpConn",
    "parse_request",
    "parse_response",
    "split_requests",
]

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
_HEX = re.compile(rb"^[0-9A-Fa-f]{1,16}$")


class FramingError(Exception):
    """The bytes are not a well-framed HTTP/1.1 message."""


# parsing


@dataclass(frozen=True)
class ParsedRequest:
    method: bytes
    target: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # names lower-cased, values stripped of OWS
    body: bytes  # decoded (chunked framing removed)
    framing: str  # "none", "length" or "chunked"

    @property
    def line(self) -> bytes:
        return b"%s %s %s" % (self.method, self.target, self.version)

    def get(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass(frozen=True)
class ParsedResponse:
    version: bytes
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    complete: bool  # False: the connection ended before the body did
    framing: str  # "none", "length", "chunked", "close"

    def get(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


def _head(buf: bytes) -> tuple[list[bytes], int] | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end]
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        raise FramingError("bare CR or LF in the head")
    return head.split(b"\r\n"), end + 4


def _fields(lines: list[bytes]) -> tuple[tuple[bytes, bytes], ...]:
    out: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise FramingError("obs-fold")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise FramingError(f"bad field line {line[:80]!r}")
        value = value.strip(b" \t")
        if not _VALUE.match(value):
            raise FramingError(f"bad field value {value[:80]!r}")
        out.append((name.lower(), value))
    return tuple(out)


def _body_framing(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[str, int]:
    lengths = [v for n, v in headers if n == b"content-length"]
    codings = [c.strip().lower() for n, v in headers if n == b"transfer-encoding"
               for c in v.split(b",")]
    if codings:
        if lengths:
            raise FramingError("both Content-Length and Transfer-Encoding")
        if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
            raise FramingError(f"transfer-coding {codings!r} does not end in one chunked")
        return "chunked", 0
    if len(lengths) > 1:
        raise FramingError("several Content-Length fields")
    if lengths:
        if not lengths[0].isdigit():
            raise FramingError(f"bad Content-Length {lengths[0]!r}")
        return "length", int(lengths[0])
    return "none", 0


def _chunked(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at `pos`; returns (body, end) or None if incomplete."""
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > 4096:
                raise FramingError("chunk-size line too long")
            return None
        size_line = buf[pos:eol]
        size_txt = size_line.split(b";", 1)[0].rstrip(b" \t")
        if not _HEX.match(size_txt):
            raise FramingError(f"bad chunk size {size_line[:40]!r}")
        size = int(size_txt, 16)
        pos = eol + 2
        if size == 0:
            # trailer section, then the final CRLF
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                line = buf[pos:eol]
                pos = eol + 2
                if not line:
                    return bytes(body), pos
                _fields([line])
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos:pos + size]
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise FramingError("chunk data not followed by CRLF")
        pos += size + 2


def parse_request(buf: bytes) -> tuple[ParsedRequest, int] | None:
    """One complete request from the start of `buf`: (request, bytes used), or None if the
    bytes so far are a proper prefix of one. Raises FramingError if they cannot be."""
    got = _head(buf)
    if got is None:
        if len(buf) > 8 << 20:
            raise FramingError("head larger than 8 MB")
        return None
    lines, pos = got
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1] \
            or not re.match(rb"^HTTP/1\.[01]$", parts[2]):
        raise FramingError(f"bad request line {lines[0][:80]!r}")
    headers = _fields(lines[1:])
    framing, length = _body_framing(headers)
    if framing == "chunked":
        got_body = _chunked(buf, pos)
        if got_body is None:
            return None
        body, pos = got_body
    elif framing == "length":
        if len(buf) < pos + length:
            return None
        body, pos = buf[pos:pos + length], pos + length
    else:
        body = b""
    return ParsedRequest(parts[0], parts[1], parts[2], headers, body, framing), pos


def split_requests(buf: bytes) -> tuple[list[ParsedRequest], bytes, str]:
    """All complete requests in `buf`, the bytes after them, and a framing error (or "")."""
    out: list[ParsedRequest] = []
    pos = 0
    while pos < len(buf):
        try:
            got = parse_request(buf[pos:])
        except FramingError as exc:
            return out, buf[pos:], str(exc)
        if got is None:
            break
        req, used = got
        out.append(req)
        pos += used
    return out, buf[pos:], ""


def parse_response(buf: bytes, *, head_request: bool = False,
                   eof: bool = False) -> tuple[ParsedResponse, int] | None:
    """One response from the start of `buf`; None if more bytes are needed. With `eof`, a
    response whose body the connection's end cut short comes back with complete=False."""
    got = _head(buf)
    if got is None:
        if eof and buf:
            return ParsedResponse(b"", 0, b"", (), bytes(buf), False, "none"), len(buf)
        return None
    lines, pos = got
    match = re.match(rb"^(HTTP/1\.[01]) (\d{3})(?: (.*))?$", lines[0])
    if match is None:
        raise FramingError(f"bad status line {lines[0][:80]!r}")
    status = int(match.group(2))
    headers = _fields(lines[1:])

    def done(body: bytes, end: int, framing: str, complete: bool = True) -> tuple[
            ParsedResponse, int]:
        return ParsedResponse(match.group(1), status, match.group(3) or b"", headers, body,
                              complete, framing), end

    if head_request or 100 <= status < 200 or status in (204, 304):
        return done(b"", pos, "none")
    codings = [c.strip().lower() for n, v in headers if n == b"transfer-encoding"
               for c in v.split(b",")]
    lengths = [v for n, v in headers if n == b"content-length"]
    if codings and codings[-1] == b"chunked":
        got_body = _chunked(buf, pos)
        if got_body is None:
            return done(buf[pos:], len(buf), "chunked", False) if eof else None
        body, end = got_body
        return done(body, end, "chunked")
    if lengths and not codings:
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            raise FramingError(f"bad Content-Length {lengths!r}")
        length = int(lengths[0])
        if len(buf) < pos + length:
            return done(buf[pos:], len(buf), "length", False) if eof else None
        return done(buf[pos:pos + length], pos + length, "length")
    if not eof:
        return None
    return done(buf[pos:], len(buf), "close")


# the upstream's script


@dataclass(frozen=True)
class Recv:
    """Read one complete request (the script ends if the router closes first)."""


@dataclass(frozen=True)
class Respond:
    """Answer the last request: 200, `x-req-id` echoed, the request target as the body."""

    status: int = 200
    extra: bytes = b""  # more header lines, each ending in CRLF


@dataclass(frozen=True)
class ByPath:
    """Answer the last request with the bytes given for its target; `Respond()` otherwise."""

    answers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class SendSlowly:
    """Send `data` in `parts` pieces, `gap` seconds apart (a slow but steady response)."""

    data: bytes
    parts: int
    gap: float


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Echo:
    """Echo every byte back until the router closes (a tunnel's far end)."""


@dataclass(frozen=True)
class Hold:
    """Read and record, never answer, until the router closes (a stalled upstream)."""


@dataclass(frozen=True)
class Loop:
    """Repeat `actions` until the router closes the connection."""

    actions: tuple[UAction, ...]


UAction = Recv | Respond | ByPath | Send | SendSlowly | Sleep | Close | Echo | Hold | Loop

DEFAULT_SCRIPT: tuple[UAction, ...] = (Loop((Recv(), Respond())),)


def default_answer(req: ParsedRequest | None, status: int = 200, extra: bytes = b"") -> bytes:
    body = req.target if req is not None else b""
    rid = req.get(b"x-req-id") if req is not None else None
    head = b"HTTP/1.1 %d OK\r\ncontent-length: %d\r\n" % (status, len(body))
    if rid is not None:
        head += b"x-req-id: " + rid + b"\r\n"
    head += extra + b"\r\n"
    if req is not None and req.method == b"HEAD":
        return head
    return head + body


class UpConn(asyncio.Protocol):
    """One accepted connection: records what arrives, runs its script."""

    def __init__(self, owner: RawUpstream) -> None:
        self.owner = owner
        self.index = len(owner.conns)
        owner.conns.append(self)
        self.received = bytearray()
        self._buf = bytearray()
        self.eof = False  # the router closed (or half-closed) its side
        self.closed = False  # the connection is gone
        self.requests: list[ParsedRequest] = []
        self.transport: asyncio.Transport | None = None
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.task = asyncio.get_running_loop().create_task(
            self._run(self.owner.script_for(self.index)), name="corpus-upstream-conn")
        self.owner.tasks.add(self.task)
        self.task.add_done_callback(self.owner.tasks.discard)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._buf += data
        self._wake.set()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake.set()
        return True  # keep our side open: the script decides

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.closed = True
        self._wake.set()

    async def _wait(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def _run(self, script: tuple[UAction, ...]) -> None:
        try:
            await self._actions(script)
        except (ConnectionError, _Ended):
            pass
        finally:
            if self.transport is not None:
                self.transport.close()

    async def _actions(self, actions: tuple[UAction, ...]) -> None:
        for action in actions:
            if isinstance(action, Loop):
                while True:
                    await self._actions(action.actions)
            elif isinstance(action, Recv):
                await self._recv()
            elif isinstance(action, Respond):
                self.write(default_answer(self.requests[-1] if self.requests else None,
                                          action.status, action.extra))
            elif isinstance(action, ByPath):
                last = self.requests[-1] if self.requests else None
                answer = dict(action.answers).get(last.target if last else b"")
                self.write(answer if answer is not None else default_answer(last))
            elif isinstance(action, Send):
                self.write(action.data)
            elif isinstance(action, SendSlowly):
                step = -(-len(action.data) // action.parts)
                for i in range(0, len(action.data), step):
                    if self.closed:
                        raise _Ended
                    self.write(action.data[i:i + step])
                    await asyncio.sleep(action.gap)
            elif isinstance(action, Sleep):
                await asyncio.sleep(action.seconds)
            elif isinstance(action, Close):
                raise _Ended
            elif isinstance(action, Echo):
                while not self.eof:
                    if self._buf:
                        data = bytes(self._buf)
                        self._buf.clear()
                        self.write(data)
                    else:
                        await self._wait()
                raise _Ended
            elif isinstance(action, Hold):
                while not self.eof:
                    await self._wait()
                raise _Ended

    async def _recv(self) -> None:
        while True:
            try:
                got = parse_request(bytes(self._buf))
            except FramingError:
                raise _Ended from None  # not a request we can answer: the case will say so
            if got is not None:
                req, used = got
                del self._buf[:used]
                self.requests.append(req)
                self.owner.arrivals.append(req)
                return
            if self.eof:
                raise _Ended
            await self._wait()


class _Ended(Exception):
    pass


@dataclass
class RawUpstream:
    """An asyncio server on 127.0.0.1, port 0, running `scripts[i]` on its i-th connection
    (`script` on any connection beyond them)."""

    script: tuple[UAction, ...] = DEFAULT_SCRIPT
    scripts: tuple[tuple[UAction, ...], ...] = ()
    conns: list[UpConn] = field(default_factory=list)
    arrivals: list[ParsedRequest] = field(default_factory=list)  # read by scripts, in order
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    port: int = 0
    _server: asyncio.Server | None = None

    def script_for(self, index: int) -> tuple[UAction, ...]:
        return self.scripts[index] if index < len(self.scripts) else self.script

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: UpConn(self), "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    def requests(self) -> tuple[list[ParsedRequest], bytes, str]:
        """Every complete request received, connection by connection, the bytes left over after
        the last complete request of each connection (joined), and the first framing error."""
        out: list[ParsedRequest] = []
        rest = b""
        error = ""
        for conn in self.conns:
            reqs, left, err = split_requests(bytes(conn.received))
            out.extend(reqs)
            rest += left
            error = error or err
        return out, rest, error
