"""Which process made a request: the caller of each hop (issue 13, item 1), on one machine.

A client connection from 127.0.0.1:P is a socket some process owns. The kernel lists sockets in
`/proc/net/tcp` (local and remote address, inode) and each process's descriptors in
`/proc/PID/fd` (`socket:[INODE]`). The data plane tells the resolver which processes it runs
(`identities`: pid → `service` or `service@sandbox`); a socket owned by one of them, or by one of
their descendants (a shell's child, a server's workers), is that unit's; any other is
`external` (a test client, curl, a browser).

The work is off the request path and batched: a new connection asks (`want`), and once the
loop's current turn is done every connection that asked is resolved: its socket's inode by an
exact lookup in the kernel's sock_diag interface (`SockDiag`, ~6 µs; reading /proc/net/tcp
instead walks the whole connection table, ~7 ms here, and is the fallback), its owner from a
cache of the units' descriptors (read again, up to the wanted sockets, when one is not in the
cache; ~1 ms for ten processes, at most every `RESCAN` seconds in batches). A
connection still unresolved when its first answer is about to be written (a request answered
within the same turns) is resolved then, on its own (`settle_now`): the client is still
connected, waiting for that answer, so its socket is still there to be found. (Once the answer
is written the client may read it and close before the hop is recorded: resolving at the
record missed callers now and then under load.) A router without identities
(Kubernetes sidecars, benchmarks) does none of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterable
from typing import Protocol

from laneway.core.processes import socket_inodes

__all__ = ["EXTERNAL", "CallerResolver", "Identified"]

EXTERNAL = "external"
RESCAN = 0.005  # at most this often (in batches) the units' descriptors are read again


class Identified(Protocol):
    """A client connection: its peer port and, once known, its caller."""

    caller: str | None

    def peer_ports(self) -> tuple[int, int] | None: ...  # (its port, our port)


NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NLMSG_ERROR = 4, 20, 1, 2
_LOOPBACK = socket.inet_aton("127.0.0.1") + b"\0" * 12


class SockDiag:
    """Socket inodes by exact address, from the kernel's sock_diag netlink interface (what `ss`
    uses): one lookup costs microseconds, where reading /proc/net/tcp walks the whole
    connection table (milliseconds, whatever the number of sockets)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        self._sock.settimeout(0.05)
        self._seq = 0

    def inode(self, sport: int, dport: int) -> int | None:
        """The inode of the TCP socket 127.0.0.1:sport → 127.0.0.1:dport, if it exists."""
        self._seq += 1
        # inet_diag_req_v2: family, protocol, ext, pad, states; inet_diag_sockid: sport, dport
        # (network order), src, dst (16 bytes each), interface, cookie (none: ~0, ~0).
        request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) \
            + struct.pack("!HH", sport, dport) + _LOOPBACK + _LOOPBACK \
            + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
        header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST,
                             self._seq, 0)
        try:
            self._sock.sendto(header + request, (0, 0))
            while True:
                data = self._sock.recv(8192)
                _, kind, _, seq, _ = struct.unpack_from("=IHHII", data)
                if seq != self._seq:
                    continue  # an answer to an earlier, timed-out question
                if kind == NLMSG_ERROR or len(data) < 16 + 72:
                    return None
                inode = int(struct.unpack_from("=I", data, 16 + 68)[0])
                return inode or None
        except OSError:
            return None

    def close(self) -> None:
        self._sock.close()


def _loopback_sockets(ports: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """(local port, remote port) → inode for the wanted loopback TCP sockets, from
    /proc/net/tcp (where sock_diag is not available)."""
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


class CallerResolver:
    def __init__(self) -> None:
        self.identities: dict[int, str] = {}  # root pid → caller name
        # In a cluster, callers by the peer's address instead (the routes table's `callers`:
        # pod IP → name): looked up when a connection opens, no process to read.
        self.by_address: dict[str, str] = {}
        self._owner: dict[int, str] = {}  # socket inode → caller name
        self._scanned = 0.0
        self._waiting: list[Identified] = []
        self._timer: asyncio.TimerHandle | None = None
        self._diag: SockDiag | None = None
        self._diag_failed = False

    def _inodes(self, pairs: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
        if self._diag is None and not self._diag_failed:
            try:
                self._diag = SockDiag()
            except OSError:
                self._diag_failed = True  # not Linux, or netlink refused: /proc/net/tcp
        if self._diag is None:
            return _loopback_sockets(pairs)
        found = {}
        for pair in pairs:
            inode = self._diag.inode(*pair)
            if inode is not None:
                found[pair] = inode
        return found

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
        inode = self._inodes({pair}).get(pair)
        if inode is not None and inode not in self._owner:
            self._scanned = 0.0
            self._rescan({inode})
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
        inodes = self._inodes(set(ports))
        fresh = True
        unknown = {inode for inode in inodes.values() if inode not in self._owner}
        if unknown:
            fresh = self._rescan(unknown)
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

    def _rescan(self, wanted: set[int]) -> bool:
        """Read the units' descriptors until the `wanted` socket inodes are found (every one,
        if some are not), unless that was done under RESCAN ago. Socket inodes come from a
        counter that only grows, so what is cached stays true; the cache is bounded."""
        now = time.monotonic()
        if now - self._scanned < RESCAN:
            return False
        self._scanned = now
        if len(self._owner) > 100_000:
            self._owner.clear()
        owner = self._owner
        missing = set(wanted) - owner.keys()
        for pid, root in _descendants(self.identities).items():
            name = self.identities[root]
            for inode in socket_inodes(pid):
                owner[inode] = name
                missing.discard(inode)
            if not missing:
                break
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
        if self._diag is not None:
            self._diag.close()
            self._diag = None
