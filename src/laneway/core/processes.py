"""Finding every process an environment started, whatever became of its parent.

Every process laneway starts for an environment (the data plane, baseline services, forks, test
commands of runs) carries `LANEWAY_OWNER=<the environment's .laneway folder>` in its environment,
and its children inherit it: a shell's grandchild that left its process group, or a group whose
leader died with a crashed daemon, is still found by reading `/proc/<pid>/environ`. Pid files
alone cannot do this (the pid of a dead leader names nothing; a reused pid names a stranger).

`laneway down`, a starting data plane (to stop what a crashed one left) and the run manager (to
stop the test command of an interrupted run) call these.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["OWNER_ENV", "alive", "find_marked", "owner_env", "socket_inodes", "stop_processes",
           "stopped", "terminate_group"]

OWNER_ENV = "LANEWAY_OWNER"


def owner_env(state_dir: Path) -> dict[str, str]:
    """The environment entry that marks a process as this environment's."""
    return {OWNER_ENV: str(state_dir.resolve())}


def socket_inodes(pid: int) -> list[int]:
    """The inodes of the sockets process `pid` holds (`/proc/PID/fd` → `socket:[INODE]`); none
    when it is gone or not ours to read."""
    out: list[int] = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.append(int(target[8:-1]))
    return out


def _environ(pid: int) -> dict[bytes, bytes] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    out: dict[bytes, bytes] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep:
            out[name] = value
    return out


def find_marked(state_dir: Path, match: Mapping[str, str] | None = None,
                exclude: Iterable[int] = ()) -> list[int]:
    """Pids of live processes marked as `state_dir`'s whose environment also has every entry of
    `match`; never this process, nor the pids in `exclude`."""
    wanted = {OWNER_ENV.encode(): str(state_dir.resolve()).encode()}
    wanted.update({k.encode(): v.encode() for k, v in (match or {}).items()})
    # Never this process nor its ancestors: a command run from a laneway-started shell (a test
    # of a run calling `laneway down`) must not stop itself.
    skip = {*_ancestors(), *exclude}
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        env = _environ(int(entry.name))
        if env is not None and all(env.get(k) == v for k, v in wanted.items()) and \
                alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def _ancestors() -> set[int]:
    out = set()
    pid = os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def _state(pid: int) -> str:
    """The process's state letter from `/proc/<pid>/stat` ("" when there is no such process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has exited: only its parent has not collected it yet)."""
    return _state(pid) not in ("", "Z", "X")


def stopped(pid: int) -> bool:
    """Whether `pid` is stopped (SIGSTOP): a SIGTERM stays pending until it is continued."""
    return _state(pid) in ("T", "t")


def stop_processes(pids: Iterable[int], grace: float = 5.0) -> list[int]:
    """SIGTERM each pid (and its process group when it leads one), SIGKILL what is left after
    `grace` seconds; returns the pids that were signalled."""
    pids = [p for p in pids if alive(p)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return pids


async def terminate_group(proc: asyncio.subprocess.Process, grace: float = 5.0) -> int:
    """Stop a command started in its own session (`start_new_session=True`) and everything in
    its process group: SIGTERM, SIGKILL after `grace` seconds; its exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return await proc.wait()
