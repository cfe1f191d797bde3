"""A fork that is an address: a process the developer runs by hand (under a debugger, from
another checkout). laneway never starts or stops it; it checks its health, as it would a
process of its own, and reports it up or down, so that the key reaches it while it answers and
gets a 503 that says why while it does not. Once it answers, the process listening on its
port is looked up (`listener_pid`), so that status shows its pid and the hops it makes are
named after the fork (`caller`), as those of a process laneway runs are."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

from laneway.core.processes import socket_inodes
from laneway.core.runtime import ProcessSpec, UnitState
from laneway.core.spec import parse_address
from laneway.runtime.local.health import check_health

__all__ = ["WatchedAddress", "listener_pid"]

CHECK_UP = 0.5  # while it answers: a process stopped by hand is noticed within this
CHECK_DOWN = 0.25  # while it does not: a process started by hand gets the key soon after


def listener_pid(port: int) -> int | None:
    """The process that listens on TCP `port` of this machine (IPv4 or IPv6), if this user
    may see it: the socket's inode from the kernel's tables, then the process holding it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                # local address (hex ip:port), remote, state (0A: LISTEN), ..., inode
                if len(fields) > 9 and fields[3] == "0A" and \
                        int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(int(fields[9]))
    if not inodes:
        return None
    # Lowest pid first: of a server and the workers it forked (who share the socket), the
    # server; the router names its descendants' connections after it too.
    for pid in sorted(int(name) for name in os.listdir("/proc") if name.isdigit()):
        if inodes.intersection(socket_inodes(pid)):
            return pid
    return None


class WatchedAddress:
    """The same face as `SupervisedProcess` (`state`, `spec`, `start`, `stop`)."""

    def __init__(self, spec: ProcessSpec, on_change: Callable[[], None]) -> None:
        assert spec.address is not None
        self.spec = spec
        self._port = parse_address(spec.address)[1]
        self._on_change = on_change
        self.state = UnitState(spec.unit, spec.service, spec.sandbox, "starting",
                               port=self._port, started_at=time.time(),
                               message=f"checking {spec.address}")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._watch(), name=f"laneway-watch-{self.spec.unit}")

    def _set(self, **changes: object) -> None:
        if any(getattr(self.state, name) != value for name, value in changes.items()):
            for name, value in changes.items():
                setattr(self.state, name, value)
            self._on_change()

    async def _watch(self) -> None:
        while True:
            problem = await check_health(self._port, self.spec.health)
            if problem is None:
                if self.state.phase != "ready":
                    pid = await asyncio.to_thread(listener_pid, self._port)
                    self._set(phase="ready", ready_at=time.time(), pid=pid,
                              message=f"answering at {self.spec.address} (run by hand"
                              + (f", pid {pid})" if pid else ")"))
            else:
                was_up = self.state.phase == "ready"
                if was_up:
                    self.state.last_failure = f"stopped answering at {time.strftime('%X')}"
                self._set(phase="unhealthy", ready_at=None, pid=None, message=(
                    f"nothing healthy at {self.spec.address} ({problem}); it is a process "
                    f"you run: start it (`laneway sandbox env {self.spec.sandbox} "
                    f"{self.spec.service}` prints its env)"))
            await asyncio.sleep(CHECK_UP if problem is None else CHECK_DOWN)

    async def stop(self) -> None:
        """Stop watching; the process itself is the developer's and keeps running."""
        self._set(phase="stopping")
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
