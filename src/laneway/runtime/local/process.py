"""One supervised unit: start, health-check, watch, restart with backoff, stop gracefully.

Each unit is owned by one named task that the `LocalRuntime` keeps and cancels on stop; the
task never dies of an unexpected exception (it is logged once per distinct cause, counted in the
unit's state, and the unit is restarted with backoff). Children run in their own process group
(so `sh -c` pipelines stop as a whole), get SIGTERM when the data plane dies (PR_SET_PDEATHSIG on
Linux), and carry the environment's marker (`core.processes`), so that a restarted data plane or
`laneway down` finds and stops what a crashed one left behind, grandchildren included.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import io
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from laneway.core.layout import user_umask
from laneway.core.logs import stamp, unstamped
from laneway.core.runtime import ProcessSpec, UnitState
from laneway.runtime.local.health import check_health

__all__ = ["MAX_LOG_BYTES", "SupervisedProcess", "copy_output", "free_port", "tail_lines"]

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0  # a process ready this long has its backoff reset
STOP_GRACE = 5.0
MAX_LOG_BYTES = 16 * 1024 * 1024  # a unit's log is rotated (one older file kept) past this


def free_port(within: tuple[int, int] | None = None) -> int:
    """A port free on loopback now, which the process binds right after: one the kernel
    hands out, or one of `within` (first, last; `ports.internal` in laneway.yaml), tried
    from a random start."""
    if within is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    first, last = within
    count = last - first + 1
    start = random.randrange(count)
    for i in range(count):
        port = first + (start + i) % count
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(errno.EADDRINUSE, f"no free port in ports.internal {first}-{last}")


def tail_lines(path: Path, count: int = 10, max_bytes: int = 8192) -> list[str]:
    """The last lines a process wrote, without timestamps or laneway's own marker lines."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    lines = [unstamped(ln) for ln in data.decode("utf-8", "replace").splitlines()]
    return [ln for ln in lines if not ln.startswith("--- laneway:")][-count:]


async def copy_output(stream: asyncio.StreamReader, path: Path,
                      max_bytes: int = MAX_LOG_BYTES) -> None:
    """Append what a process writes to its log, each line prefixed with the time it was read
    (so that logs can be cut by time: `laneway sandbox logs`, MCP `get_logs(since=…)`). Past
    `max_bytes` the log becomes `<name>.1` (replacing an older one) and a new one begins, so a
    chatty process cannot fill the disk. The pipe is read whatever happens to the file: on a
    full disk lines are dropped, because a process blocked on a full pipe stops serving."""
    pending = b""
    out = _Log(path)
    try:
        while chunk := await stream.read(65536):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if lines:
                prefix = stamp(time.time())
                out.write(b"".join(prefix + line + b"\n" for line in lines))
            if len(pending) > 65536:  # a very long line: write it as it comes
                out.write(stamp(time.time()) + pending + b"\n")
                pending = b""
            if out.size > max_bytes:
                out.rotate()
        if pending:
            out.write(stamp(time.time()) + pending + b"\n")
    finally:
        out.close()


class _Log:
    """A unit's log file that never raises: a write the disk refuses is dropped and counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dropped = 0
        self._fh = self._open()
        self.size = self._fh.tell() if self._fh is not None else 0

    def _open(self) -> io.FileIO | None:
        try:
            return io.FileIO(self.path, "ab")
        except OSError:
            return None

    def write(self, data: bytes) -> None:
        if self.dropped:
            note = f"--- laneway: {self.dropped} bytes of output lost (disk full?) ---\n"
            dropped, self.dropped = self.dropped, 0
            if not self._write_all(stamp(time.time()) + note.encode()):
                self.dropped += dropped
                self.dropped += len(data)
                return
        if not self._write_all(data):
            self.dropped += len(data)

    def _write_all(self, data: bytes) -> bool:
        """Write all of `data`, or (a full disk) as much as fits; a cut line is ended, so the
        next one starts on its own line."""
        if self._fh is None:
            self._fh = self._open()
            if self._fh is None:
                return False
        view = memoryview(data)
        try:
            while view:
                written = self._fh.write(view)
                if not written:
                    raise OSError("no progress")
                self.size += written
                view = view[written:]
        except OSError:
            if len(view) != len(data):  # part of it went in: end that line if we can
                with contextlib.suppress(OSError):
                    self.size += self._fh.write(b"\n") or 0
            return False
        return True

    def rotate(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._fh = self._open()
        self.size = 0

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


def _child_setup(umask: int) -> Callable[[], None]:
    """What runs in the child between fork and exec (uvloop's subprocess takes no `umask=`)."""

    def setup() -> None:  # pragma: no cover - runs in the child
        # The data plane keeps .laneway/ private (umask 077); what a service writes into the
        # user's tree is the user's, with the user's umask.
        os.umask(umask)
        if sys.platform == "linux":
            with contextlib.suppress(Exception):
                libc = ctypes.CDLL("libc.so.6", use_errno=True)
                libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return setup


class SupervisedProcess:
    def __init__(self, spec: ProcessSpec, log_path: Path, pid_dir: Path,
                 on_change: Callable[[], None], extra_env: dict[str, str] | None = None,
                 port_range: tuple[int, int] | None = None) -> None:
        self.spec = spec
        self.port_range = port_range
        self.extra_env = extra_env or {}
        self.log_path = log_path
        self._pid_path = pid_dir / (spec.unit.replace("/", "_").replace("@", "_") + ".json")
        self._on_change = on_change
        self.state = UnitState(spec.unit, spec.service, spec.sandbox, "starting")
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._last_failure = ""  # why the previous run ended, while the next one starts
        self._logged_causes: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"laneway-unit-{self.spec.unit}"
        )

    def _set(self, **changes: object) -> None:
        for name, value in changes.items():
            setattr(self.state, name, value)
        self._on_change()

    async def _supervise(self) -> None:
        backoff = BACKOFF_START
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                # The command cannot even be started (not found, not executable, bad cwd).
                self._set(phase="crashed", pid=None, exit_code=None,
                          message=self._cannot_start(exc), log_tail=[])
            except Exception as exc:
                self._unexpected(exc)
            if self._stopping:
                return
            if self.state.ready_at is not None and time.monotonic() - started > STABLE_AFTER:
                backoff = BACKOFF_START
            self._last_failure = self.state.message  # said again while it restarts
            self.state.last_failure = self.state.message  # and kept once it is ready again
            self.state.message += f"; restarting in {backoff:g}s"
            self._on_change()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            self._set(restarts=self.state.restarts + 1)

    def _cannot_start(self, exc: OSError) -> str:
        cwd = self.spec.cwd
        if cwd is not None and not os.path.isdir(cwd):
            return f"cannot start {self.spec.argv[0]!r}: its cwd {cwd} is not a folder"
        return f"cannot start {self.spec.argv[0]!r}: {exc.strerror or exc}"

    def _unexpected(self, exc: Exception) -> None:
        """A bug of ours (or of a library) while supervising: logged once per distinct cause,
        counted, and the unit restarted with backoff like a crash; never a dead supervisor."""
        cause = f"{type(exc).__name__}: {exc}"
        if cause not in self._logged_causes:
            self._logged_causes.add(cause)
            log.error("supervising %s failed (%s); restarting it with backoff", self.spec.unit,
                      cause, exc_info=exc)
        self._set(phase="crashed", pid=None, exit_code=None, errors=self.state.errors + 1,
                  message=f"laneway could not supervise it ({cause})", log_tail=[])

    async def _run_once(self) -> None:
        port = free_port(self.port_range)
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(self.spec.env)
        env["PORT"] = str(port)
        env["LANEWAY_UNIT"] = self.spec.unit
        with contextlib.suppress(OSError):  # a full disk must not keep a service down
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                log.write(stamp(time.time()) + f"--- laneway: starting "
                          f"{' '.join(self.spec.argv)} (PORT={port}) ---\n".encode())
        proc = await asyncio.create_subprocess_exec(
            *self.spec.argv, env=env, cwd=self.spec.cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=_child_setup(user_umask()),
        )
        assert proc.stdout is not None
        copier = asyncio.get_running_loop().create_task(
            copy_output(proc.stdout, self.log_path), name=f"laneway-log-{self.spec.unit}")
        self._proc = proc
        self._write_pid(proc.pid)
        # A restart keeps saying why the last run ended: a crash-looping fork is reported as
        # such in its 503s and status, not as merely "starting".
        last = self._last_failure
        waiting = "waiting for the health check" + (f"; last time: {last}" if last else "")
        self._set(phase="starting", port=port, pid=proc.pid, exit_code=None, message=waiting,
                  started_at=time.time(), ready_at=None, log_tail=[])
        waiter = asyncio.ensure_future(proc.wait())
        try:
            await self._await_health(proc, waiter, port)
            code = await waiter
            if not self._stopping:
                # The leader is gone; what it started must not keep serving beside the
                # restarted copy (a `shell: true` command's child, once its shell died).
                _signal_group(proc.pid, signal.SIGKILL)
        except BaseException:
            # Whatever went wrong here, the process must not outlive its supervision.
            if proc.returncode is None and not self._stopping:
                _signal_group(proc.pid, signal.SIGKILL)
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
            # The last lines (the error that made it exit) must be in the log before the crash
            # is reported; a child that keeps the pipe open must not hold the supervisor.
            try:
                await asyncio.wait_for(asyncio.shield(copier), 1.0)
            except (TimeoutError, asyncio.CancelledError):
                copier.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await copier
        self._remove_pid()
        if self._stopping:
            return
        tail = tail_lines(self.log_path)
        how = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
        last = f"; last log lines: {' | '.join(tail[-3:])}" if tail else ""
        self._set(phase="crashed", pid=None, exit_code=code, message=f"{how}{last}",
                  log_tail=tail)

    async def _await_health(self, proc: asyncio.subprocess.Process,
                            waiter: asyncio.Future[int], port: int) -> None:
        deadline = time.monotonic() + self.spec.startup_timeout
        delay = 0.02
        problem: str | None = "not checked yet"
        while not waiter.done():
            problem = await check_health(port, self.spec.health)
            if problem is None:
                self._set(phase="ready", ready_at=time.time(), message="healthy")
                return
            if time.monotonic() > deadline and self.state.phase != "unhealthy":
                self._set(phase="unhealthy", message=(
                    f"not healthy after {self.spec.startup_timeout:g}s: {problem} (the process "
                    f"must listen on $PORT={port}; check its log)"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), delay)
            delay = min(delay * 1.5, 0.25 if self.state.phase == "starting" else 1.0)

    async def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period, supervisor ended."""
        self._stopping = True
        self._set(phase="stopping")
        proc = self._proc
        if proc is not None and proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        if proc is not None:
            _signal_group(proc.pid, signal.SIGKILL)  # stragglers in the group
        if self.task is not None:
            # Let it end by itself first: it reads the process's output to the end, so the
            # pipe is closed cleanly; one asleep in its restart backoff is cancelled.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.task), 1.5)
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self._remove_pid()

    def _write_pid(self, pid: int) -> None:
        # Best effort (a full disk): the environment marker finds the process without it.
        with contextlib.suppress(OSError):
            self._pid_path.parent.mkdir(parents=True, exist_ok=True)
            self._pid_path.write_text(json.dumps({"pid": pid, "unit": self.spec.unit,
                                                  "argv": list(self.spec.argv)}))

    def _remove_pid(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._pid_path.unlink()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def reap_leftovers(pid_dir: Path) -> list[str]:
    """Stop process groups recorded by a daemon that died; returns the units stopped."""
    stopped = []
    for path in sorted(pid_dir.glob("*.json")) if pid_dir.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            continue
        # Only a process still running the recorded command is ours (pids get reused).
        if cmdline and cmdline[0].decode(errors="replace") == record["argv"][0]:
            _signal_group(pid, signal.SIGTERM)
            stopped.append(str(record["unit"]))
        path.unlink(missing_ok=True)
    return stopped
