"""The test projects' ports (tests/ports.py): free, outside the ephemeral range, and never the
same for two pytest-xdist workers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.ports import free_ports


@pytest.mark.parametrize(("worker", "count"), [("gw0", "4"), ("gw1", "4"), ("gw3", "4"),
                                               ("gw2", "3")])
def test_each_worker_takes_its_own_stripe_of_free_ports(monkeypatch: pytest.MonkeyPatch,
                                                        worker: str, count: str) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", count)
    ports = free_ports(50)
    low, high = (int(p) for p in
                 Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert len(set(ports)) == 50
    assert {p % int(count) for p in ports} == {int(worker.removeprefix("gw"))}
    assert not any(low <= p <= high for p in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))  # free when handed out


def test_without_xdist_every_port_is_a_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert len({p % 2 for p in free_ports(60)}) == 2  # both parities: no stripe
