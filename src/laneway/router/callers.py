"""Which process made a request: the caller of each hop (issue 13, item 1), on one machine.

A client connection from 127.0.0.1:P is a socket some process owns. The kernel lists sockets in
`/proc/net/tcp` (local and remote address, inode) and each process's descriptors in
`/proc/PID/fd` (`socket:[INODE]`). The data plane tells the resolver which processes it runs
(`identities`: pid → `service` or `service@sandbox`); a socket owned by one of them, or by one of
their descendants (a shell's child, a server's workers), is that unit's; any other is
`external` (a test client, curl, a browser).

The work is off the request path and batched: a new connection asks (`want`), and once the
loop's current turn is done every connection that asked is resolved with one read of
`/proc/net/tcp` and a scan of the descriptors of the units' process trees (cached by inode,
rescanned when a socket is not in the cache, in batches at most every `RESCAN` seconds). A
connection still unresolved when its first hop is recorded (a request answered within the same
turns) is resolved then, on its own (`settle_now`): the client is still connected, waiting for
the answer being written, so its socket is still there to be found. A router without identities
(Kubernetes sidecars, benchmarks) does none of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable
from typing import Protocol

__all__ = ["EXTERNAL", "CallerResolver", "Identified"]

EXTERNAL = "external"
RESCAN = 0.005  # at most this often (in batches) the units' descriptors are read again


class Identified(Protocol):
    """A client connection: its peer port and, once known, its caller."""

    caller: str | None

    def peer_ports(self) -> tuple[int, int] | None: ...  # (its port, our port)


def _loopback_sockets(ports: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """(local port, remote port) → inode for the wanted loopback TCP sockets."""
    found: dict[tuple[int, int], int] = {}
    wanted = {(f"{a:04X}", f"{b:04X}"): (a, b) for a, b in ports}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) < 10:
                        continue
                    key = (fields[1].rpartition(":")[2], fields[2].rpartition(":")[2])
                    hit = wanted.get(key)
                    if hit is not None and fields[9] != "0":
                        found[hit] = int(fields[9])
        except OSError:
            continue
    return found


def _descendants(roots: Iterable[int]) -> dict[int, int]:
    """Every process under `roots` (and the roots), each mapped to its root."""
    out: dict[int, int] = {}
    todo = [(pid, pid) for pid in roots]
    while todo:
        pid, root = todo.pop()
        if pid in out:
            continue
        out[pid] = root
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                todo.extend((int(child), root) for child in f.read().split())
    return out


def _socket_inodes(pid: int) -> list[int]:
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


class CallerResolver:
    def __init__(self) -> None:
        self.identities: dict[int, str] = {}  # root pid → caller name
        self._owner: dict[int, str] = {}  # socket inode → caller name
        self._scanned = 0.0
        self._waiting: list[Identified] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def active(self) -> bool:
        return bool(self.identities)

    def set_identities(self, identities: dict[int, str]) -> None:
        self.identities = dict(identities)
        self._owner.clear()
        self._scanned = 0.0

    def want(self, conn: Identified) -> None:
        self._waiting.append(conn)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(0, self._resolve)

    def settle_now(self, conn: Identified) -> None:
        """Resolve one connection at once (its hop is being recorded)."""
        pair = conn.peer_ports()
        if pair is None:
            self._settle(conn, "")
            return
        inode = _loopback_sockets({pair}).get(pair)
        if inode is not None and inode not in self._owner:
            self._scanned = 0.0
            self._rescan()
        self._settle(conn, self._name(inode))

    def _name(self, inode: int | None) -> str:
        # No socket any more (the client already closed): the router cannot tell.
        return "" if inode is None else self._owner.get(inode, EXTERNAL)

    def _resolve(self) -> None:
        self._timer = None
        waiting, self._waiting = self._waiting, []
        ports: dict[tuple[int, int], list[Identified]] = {}
        for conn in waiting:
            pair = conn.peer_ports()
            if pair is None:
                self._settle(conn, EXTERNAL)
            else:
                ports.setdefault(pair, []).append(conn)
        if not ports:
            return
        inodes = _loopback_sockets(set(ports))
        fresh = True
        if any(inode not in self._owner for inode in inodes.values()):
            fresh = self._rescan()
        for pair, conns in ports.items():
            inode = inodes.get(pair)
            if inode is not None and inode not in self._owner and not fresh:
                self._waiting.extend(conns)  # a socket newer than the last scan: next round
                continue
            name = self._name(inode)
            for conn in conns:
                self._settle(conn, name)
        if self._waiting and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(RESCAN, self._resolve)

    def _rescan(self) -> bool:
        """Read the units' descriptors again, unless that was done under RESCAN ago."""
        now = time.monotonic()
        if now - self._scanned < RESCAN:
            return False
        self._scanned = now
        owner: dict[int, str] = {}
        for pid, root in _descendants(self.identities).items():
            name = self.identities[root]
            for inode in _socket_inodes(pid):
                owner[inode] = name
        self._owner = owner
        return True

    @staticmethod
    def _settle(conn: Identified, name: str) -> None:
        if conn.caller is not None:
            return  # settled already (at its first hop)
        conn.caller = name

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
