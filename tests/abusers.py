"""Abusive HTTP clients, the upstream they need, and the figures that judge a proxy under them:
its resident memory (VmRSS, VmHWM from /proc/<pid>/status) and the client connections it holds
(from /proc/net/tcp). Shared by tests/integration/test_router_memory.py (which asserts) and
bench/abuse.py (which prints the same cases for laneway's router and for HAProxy).

Every client here is real: sockets on loopback, bounded in count and in time.

The upstream runs as its own process, `python -m tests.abusers [--port N]` (prints `port N` once
it listens), so that its buffers are not the proxy's nor the clients'. It answers:

    GET /             200, a short body
    GET /big?mb=N     200, N MiB with a content-length, as fast as the proxy takes it
    GET /flood        (with Upgrade) 101, then bytes forever, as fast as the proxy takes them
    GET /sink         (with Upgrade) 101, then it never reads again
    POST /upload      reads the body (content-length) as it comes; 200 with the byte count
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import select
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
CHUNK = b"x" * (256 * 1024)

# --- the upstream -------------------------------------------------------------------------


async def _upstream_connection(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            lines = head.decode("latin-1").split("\r\n")
            _, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            path, _, query = target.partition("?")
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            length = int(headers.get("content-length", "0") or 0)
            if path == "/flood":
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: flood\r\n"
                             b"connection: upgrade\r\n\r\n")
                while True:
                    writer.write(CHUNK)
                    await writer.drain()
            if path == "/sink":
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: sink\r\n"
                             b"connection: upgrade\r\n\r\n")
                await writer.drain()
                writer.transport.pause_reading()
                await asyncio.sleep(3600)
                return
            received = 0
            while received < length:
                data = await reader.read(min(length - received, 1 << 18))
                if not data:
                    return
                received += len(data)
            if path == "/big":
                size = int(float(params.get("mb", "10")) * MIB) + int(params.get("extra", "0"))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                             b"content-length: %d\r\n\r\n" % size)
                sent = 0
                while sent < size:
                    part = CHUNK if size - sent >= len(CHUNK) else CHUNK[:size - sent]
                    writer.write(part)
                    sent += len(part)
                    await writer.drain()
                continue
            body = b"%d\n" % received if path == "/upload" else b"ok\n"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                         b"content-length: %d\r\n\r\n%b" % (len(body), body))
            await writer.drain()
    except (ConnectionError, OSError):
        return
    finally:
        writer.close()


async def serve_upstream(port: int = 0) -> None:
    server = await asyncio.start_server(_upstream_connection, "127.0.0.1", port,
                                        limit=1 << 20, backlog=4096)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class Upstream:
    """The upstream above, as a child process."""

    def __init__(self, cpu: int | None = None) -> None:
        argv = [sys.executable, "-m", "tests.abusers"]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = _read_line(self.proc, 20.0)
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"the abuse upstream did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        stop(self.proc)


# --- processes -----------------------------------------------------------------------------


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def free_port() -> int:
    """A port free now, outside the kernel's ephemeral range, this test worker's own
    (`tests/ports.py`)."""
    return free_ports(1)[0]


class Router:
    """`python -m laneway.router` serving `svc` on a port of its own, its baseline the upstream,
    its routes feed unreachable (it keeps serving the baseline; the feed's complaints go to
    `log`). `flags` are extra command-line flags (timeouts, limits); `nofile` sets its
    RLIMIT_NOFILE, soft and hard."""

    def __init__(self, upstream: int, log: Path, flags: tuple[str, ...] = (),
                 nofile: int | None = None, cpu: int | None = None) -> None:
        self.log = log
        for _ in range(5):
            self.port = free_port()
            argv = [sys.executable, "-m", "laneway.router", "--listen", f"svc={self.port}",
                    "--baseline", f"svc=127.0.0.1:{upstream}", "--routes",
                    "http://127.0.0.1:1/", *flags]
            if nofile is not None:  # prlimit execs the router: its pid is the router's
                argv = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *argv]
            if cpu is not None:
                argv = ["taskset", "-c", str(cpu), *argv]
            with log.open("ab") as err:
                self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                             text=True)
            line = _read_line(self.proc, 20.0)
            if line.startswith("laneway router for svc"):
                self.pid = self.proc.pid
                return
            stop(self.proc)
            if "already in use" not in log.read_text(errors="replace"):
                break
        raise RuntimeError(f"the router did not start:\n{log.read_text(errors='replace')}")

    def stop(self) -> int | None:
        code = self.proc.poll()
        stop(self.proc)
        return code


# --- what a process holds ------------------------------------------------------------------


def _status(pid: int, field_name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field_name)


def rss_mb(pid: int) -> float:
    return _status(pid, "VmRSS")


def hwm_mb(pid: int) -> float:
    """The process's peak resident memory since it started."""
    return _status(pid, "VmHWM")


def held(port: int) -> int:
    """Connections to `port` (on 127.0.0.1) that the server side still holds open: established
    or half-closed by the client (CLOSE_WAIT), including those waiting in the accept queue."""
    local = f"0100007F:{port:04X}"
    peers = set()  # the file is read in pieces while sockets change: a socket may show twice
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1] == local and parts[3] in ("01", "08"):
            peers.add(parts[2])
    return len(peers)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_own_fd_limit(wanted: int = 16384) -> None:
    """The clients need thousands of sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --- plain requests ------------------------------------------------------------------------


async def connect(port: int, rcvbuf: int | None = None
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection; `rcvbuf` shrinks its kernel receive buffer first (a slow reader)."""
    if rcvbuf is None:
        return await asyncio.open_connection("127.0.0.1", port)
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response (content-length or close-delimited): its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length is not None else await reader.read()
    return status, body


def close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def get(port: int, path: str = "/", timeout: float = 10.0) -> int:
    """A normal request on a new connection: its status, 0 if no answer within `timeout`, -1
    if the connection was refused or reset."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await connect(port)
            writer.write(f"GET {path} HTTP/1.1\r\nhost: abuse\r\n\r\n".encode())
            status, _ = await read_response(reader)
            return status
    except TimeoutError:
        return 0
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        return -1
    finally:
        if writer is not None:
            close(writer)


async def warm(port: int) -> None:
    """A few ordinary exchanges first, so that the figure before abuse is the steady one."""
    for path in ("/", "/big?mb=1", "/"):
        status = await get(port, path)
        assert status == 200, f"warm-up {path}: {status}"


# --- the abusive clients -------------------------------------------------------------------

UPGRADE = "GET {path} HTTP/1.1\r\nhost: abuse\r\nconnection: upgrade\r\nupgrade: {name}\r\n\r\n"


async def tunnel_reader_stalls(port: int, seconds: float) -> dict[str, Any]:
    """After `101` the upstream floods; this client never reads. Held `seconds`, then closed."""
    _, writer = await connect(port, rcvbuf=65536)
    writer.transport.pause_reading()  # not a byte read: the stream's own buffer stays empty
    try:
        writer.write(UPGRADE.format(path="/flood", name="flood").encode())
        await asyncio.sleep(seconds)
        return {"held": held(port)}
    finally:
        close(writer)


async def tunnel_writer_floods(port: int, seconds: float) -> dict[str, Any]:
    """After `101` this client writes as fast as the proxy reads; the upstream never reads."""
    reader, writer = await connect(port)
    sent = 0
    try:
        writer.write(UPGRADE.format(path="/sink", name="sink").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split()[1])
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + seconds):
                while time.monotonic() < deadline:
                    writer.write(CHUNK)
                    sent += len(CHUNK)
                    await writer.drain()
        return {"status": status, "sent_mb": round(sent / MIB, 1), "held": held(port)}
    finally:
        close(writer)


async def pipelined_unread(port: int, count: int, mb: float, seconds: float) -> dict[str, Any]:
    """`count` pipelined GETs of `mb` MiB each, sent at once; the responses are never read.
    Held `seconds` (past the upstream and client timeouts), then closed."""
    _, writer = await connect(port, rcvbuf=65536)
    writer.transport.pause_reading()
    try:
        writer.write(f"GET /big?mb={mb:g} HTTP/1.1\r\nhost: abuse\r\n\r\n".encode() * count)
        await asyncio.sleep(seconds)
        return {"held": held(port)}
    finally:
        close(writer)


async def _read_slowly(port: int, mb: float, pause: float, timeout: float) -> int:
    """GET `mb` MiB (plus up to 2 MiB) and read it 64 KiB at a time, `pause` s between reads,
    through a small receive buffer: its status, -1 if cut short, 0 if stuck."""
    reader, writer = await connect(port, rcvbuf=32768)
    try:
        extra = random.randrange(2 * MIB)
        writer.write(f"GET /big?mb={mb:g}&extra={extra} HTTP/1.1\r\nhost: abuse\r\n\r\n"
                     .encode())
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split()[1])
            length = next(int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length:"))
            got = 0
            while got < length:
                data = await reader.read(65536)
                if not data:
                    return -1
                got += len(data)
                await asyncio.sleep(pause)
        return status
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
        return 0
    finally:
        close(writer)


async def slow_readers_then_others(port: int, rounds: int, mb: float, parallel: int = 4,
                                   timeout: float = 15.0, pause: float = 0.001
                                   ) -> dict[str, Any]:
    """Each round: `parallel` clients read an `mb` MiB response each, slowly; then as many
    unrelated requests at once on new connections, which take the upstream connections the slow
    ones just gave back to the pool. Counts the statuses of both.

    A proxy that pauses reading an upstream while its client is slow, and hands the connection
    back to the pool in that state when the response's last bytes were the ones that filled
    the client's buffer, leaves the next request on it waiting for the upstream timeout (a 504).
    The response sizes vary by up to 2 MiB, about one cycle of the kernel's send buffer (it
    wakes a writer when a third of its 4 MiB is free), so that the last bytes fall anywhere in
    a cycle: on such a proxy, about one slow response in ten."""
    statuses: Counter[int] = Counter()
    slow: Counter[int] = Counter()
    for _ in range(rounds):
        for status in await asyncio.gather(*(_read_slowly(port, mb, pause, timeout)
                                             for _ in range(parallel))):
            slow[status] += 1
        for status in await asyncio.gather(*(get(port, "/", timeout=timeout)
                                             for _ in range(parallel))):
            statuses[status] += 1
    return {"others": dict(statuses), "slow": dict(slow)}


async def _slow_head(port: int, drip: float, seconds: float, out: Counter[str]) -> None:
    """Sends a header line every `drip` s, never ending the head, until the proxy gives up."""
    try:
        reader, writer = await connect(port)
    except OSError:
        out["refused"] += 1
        return
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: abuse\r\n")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(reader.read(4096), min(drip, left))
            except TimeoutError:
                writer.write(b"x-drip: 1\r\n")
                continue
            out["answered " + data[9:12].decode() if data else "closed"] += 1
            return
        out["still open"] += 1
    except OSError:
        out["reset"] += 1
    finally:
        close(writer)


async def _idle(port: int, seconds: float, out: Counter[str]) -> None:
    """One request, then an idle keep-alive connection, until the proxy closes it."""
    try:
        reader, writer = await connect(port)
    except OSError:
        out["refused"] += 1
        return
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: abuse\r\n\r\n")
        status, _ = await asyncio.wait_for(read_response(reader), 10)
        out[f"got {status}"] += 1
        try:
            data = await asyncio.wait_for(reader.read(4096), seconds)
        except TimeoutError:
            out["still open"] += 1
        else:
            out["closed" if not data else "sent more"] += 1
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
        out["failed"] += 1
    finally:
        close(writer)


async def _gather_batched(make: Callable[[], Awaitable[None]], count: int, batch: int) -> None:
    """`count` calls of `make`, at most `batch` at a time."""
    gate = asyncio.Semaphore(batch)

    async def one() -> None:
        async with gate:
            await make()

    await asyncio.gather(*(one() for _ in range(count)))


async def slow_heads_and_idlers(port: int, slow: int, idle: int, seconds: float,
                                drip: float = 0.5) -> dict[str, Any]:
    """`slow` connections sending their heads a line at a time and `idle` idle keep-alive
    connections (after one request each), all kept for up to `seconds` unless the proxy closes
    them. Reports what each saw, how many connections the proxy held at most, and how many it
    still held a second before the clients' time is up (`held_late`)."""
    heads: Counter[str] = Counter()
    idlers: Counter[str] = Counter()
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, held(port))
            await asyncio.sleep(0.25)

    async def checkpoint() -> None:
        nonlocal late
        await asyncio.sleep(seconds - 1)
        late = held(port)

    late: int | None = None
    watcher = asyncio.ensure_future(watch())
    checker = asyncio.ensure_future(checkpoint())
    try:
        # All open at once (the kernel's accept queue absorbs the burst), each then living up
        # to `seconds`.
        await asyncio.gather(*(_slow_head(port, drip, seconds, heads) for _ in range(slow)),
                             *(_idle(port, seconds, idlers) for _ in range(idle)))
    finally:
        for task in (watcher, checker):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if late is None:  # every client was let go before the checkpoint
        late = held(port)
    return {"heads": dict(heads), "idle": dict(idlers), "held_peak": peak,
            "held_late": late}


async def slow_upload(port: int, seconds: float, chunk: int = 4096,
                      interval: float = 0.1) -> dict[str, Any]:
    """A POST whose body arrives steadily (`chunk` bytes every `interval` s) for `seconds` in
    all: every gap is short, the whole is longer than the upstream timeout."""
    count = max(1, int(seconds / interval))
    total = count * chunk
    reader, writer = await connect(port)
    answer = asyncio.ensure_future(read_response(reader))
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nhost: abuse\r\ncontent-length: %d\r\n\r\n"
                     % total)
        sent = 0
        for _ in range(count):
            if answer.done():
                break  # answered (or cut) mid-upload
            try:
                writer.write(b"u" * chunk)
                await writer.drain()
            except ConnectionError:
                break
            sent += chunk
            await asyncio.sleep(interval)
        try:
            status, body = await asyncio.wait_for(answer, 15)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
            status, body = -1, b""
        return {"status": status, "length": total, "sent": sent,
                "echoed": body.strip().decode("latin-1")[:80]}
    finally:
        answer.cancel()
        close(writer)


async def beyond_the_limit(port: int, limit: int, extra: int, wait: float,
                           answer: float = 3.0) -> dict[str, Any]:
    """`limit - 16` keep-alive connections (one request each, 16 at a time) that then stay
    idle, then `extra` more (64 at a time), which a proxy that bounds its connections answers
    at once with 503 beyond `limit`; each has `answer` s to be answered. Those answered 200 stay
    open, idle. After `wait` s (past the keep-alive timeout) a new client tries."""
    kept: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    seen: dict[str, Counter[int]] = {"first": Counter(), "extra": Counter()}

    async def one(phase: str) -> None:
        reader = writer = None
        try:
            async with asyncio.timeout(answer):
                reader, writer = await connect(port)
                writer.write(b"GET / HTTP/1.1\r\nhost: abuse\r\n\r\n")
                status, _ = await read_response(reader)
        except TimeoutError:
            status = 0
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status = -1
        seen[phase][status] += 1
        if reader is not None and writer is not None:
            if status == 200:
                kept.append((reader, writer))
            else:
                close(writer)

    try:
        await _gather_batched(lambda: one("first"), limit - 16, 16)
        await _gather_batched(lambda: one("extra"), extra, 64)
        held_after_abuse = held(port)
        await asyncio.sleep(wait)
        closed = sum(1 for r, w in kept if r.at_eof() or w.transport.is_closing())
        newcomer = await get(port, "/", timeout=answer)
        return {"first": dict(seen["first"]), "extra": dict(seen["extra"]),
                "held_after_abuse": held_after_abuse, "idle_kept": len(kept),
                "idle_closed_by_proxy": closed, "newcomer": newcomer, "held_end": held(port)}
    finally:
        for _, writer in kept:
            close(writer)


# --- one measured case ---------------------------------------------------------------------


@dataclass
class Figures:
    """A proxy's memory around one case (MB), what the abuse saw, and what came after."""

    before: float
    peak: float
    after: float
    result: dict[str, Any] = field(default_factory=dict)
    probe: int = 0  # a normal request after the abuse: its status
    held_after: int = 0  # client connections the proxy still holds then

    @property
    def growth(self) -> float:
        return self.peak - self.before

    def line(self) -> str:
        return (f"RSS before {self.before:.1f} MB, peak {self.peak:.1f} MB "
                f"(+{self.growth:.1f}), after {self.after:.1f} MB; normal request after: "
                f"{self.probe}; connections held after: {self.held_after}; {self.result}")


async def measure(pid: int, port: int, abuse: Callable[[], Awaitable[dict[str, Any]]],
                  settle: float) -> Figures:
    """RSS before (after a warm-up), the peak (VmHWM: the proxy is fresh for each case), and
    `settle` seconds after the abusive clients went away; then a normal request."""
    await warm(port)
    before = rss_mb(pid)
    result = await abuse()
    peak = hwm_mb(pid)
    await asyncio.sleep(settle)
    after = rss_mb(pid)
    probe = await get(port, "/", timeout=10)
    await asyncio.sleep(0.3)  # the probe's own connection is gone from the proxy's count
    return Figures(before, peak, after, result, probe, held(port))


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser(description="the upstream of the abuse cases")
    parser.add_argument("--port", type=int, default=0)
    uvloop.run(serve_upstream(parser.parse_args().port))
