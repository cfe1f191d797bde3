"""Public ports for test projects and routers, free now and never handed to two test workers.

Outside the kernel's ephemeral range: a port the kernel handed out (port 0) is soon the local
port of some outgoing connection or of another listener, and a later bind then fails ("already
in use") at random. And striped by pytest-xdist worker (worker i of n takes the ports p with
p % n == i): a port is only checked free when it is picked, so two workers picking at random
from one range did, now and then, pick the same one and one of them failed to start."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

__all__ = ["free_ports"]


def _stripe() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    return index % max(1, count), max(1, count)


def free_ports(count: int) -> list[int]:
    low, high = (int(p) for p in
                 Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    start, stop = (20000, low) if low > 21000 else (high + 1, 65535)
    index, workers = _stripe()
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(start, stop)
        port -= (port - index) % workers  # this worker's stripe
        if port < start or port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports
