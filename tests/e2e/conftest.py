"""End-to-end fixtures: a project folder with a 3-service chain, driven by the `laneway` CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium  # noqa: F401  (a fixture for the browser tests)
from tests.ports import free_ports

LANEWAY = str(Path(sys.executable).parent / "laneway")
CHAIN = str(Path(__file__).parents[1] / "apps" / "chain.py")


LOG_FILES = 40  # at most this many logs, and the last LOG_LINES of each, in a failure's report
LOG_LINES = 25


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed e2e test's report ends with the tails of the logs laneway wrote under its
    folder (daemon, data plane, every service and fork): a failure seen once in CI, such as a
    service that closed a connection without answering, then says why without a rerun."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    tmp = item.funcargs.get("tmp_path") if isinstance(item, pytest.Function) else None
    if report.when != "call" or not report.failed or not isinstance(tmp, Path):
        return
    logs = sorted(p for p in tmp.rglob("*.log") if ".laneway" in p.parts and p.is_file())
    for log in logs[:LOG_FILES]:
        lines = log.read_text("utf-8", "replace").splitlines()[-LOG_LINES:]
        if lines:
            report.sections.append((f"log {log.relative_to(tmp)}", "\n".join(lines)))


@dataclass
class Project:
    root: Path
    ports: dict[str, int]
    pids: set[int] = field(default_factory=set)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([LANEWAY, *args], cwd=self.root, capture_output=True,
                                text=True, timeout=timeout, check=False, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"laneway {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def api(self, path: str) -> Any:
        """GET `path` of the daemon's API directly: no CLI start-up in between, for what a
        test must read often or quickly."""
        import httpx

        state = self.root / ".laneway"
        info = json.loads((state / "api.json").read_text())
        headers = {"authorization": f"Bearer {(state / 'token').read_text().strip()}"}
        answer = httpx.get(f"{info['url']}{path}", headers=headers, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def remember_pids(self) -> None:
        """Every process laneway runs now, to check later that none is left behind. Read from
        the API itself, not through two CLI start-ups: every e2e test does this twice."""
        self.pids |= {s["pid"] for s in self.api("/v1/status")["services"] if s["pid"]}
        for sb in self.api("/v1/sandboxes"):
            self.pids |= {f["pid"] for f in sb["status"]["forks"] if f["pid"]}
        info = json.loads((self.root / ".laneway" / "api.json").read_text())
        self.pids.add(info["pid"])

    @contextlib.contextmanager
    def running(self) -> Iterator[Project]:
        """`laneway up --detach`; on the way out `down`, and every process it ran gone (a test
        may have killed the daemon itself)."""
        self.run("up", "--detach")
        self.remember_pids()
        try:
            yield self
        finally:
            if (self.root / ".laneway" / "api.json").exists():
                self.remember_pids()
                self.run("down", check=False)
            wait_all_dead(self.pids)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_all_dead(pids: set[int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"left running: {sorted(p for p in pids if alive(p))}")
        time.sleep(0.05)


def chain_yaml(ports: dict[str, int], extra: str = "") -> str:
    return f"""
name: chain
services:
  c:
    run: [{sys.executable}, {CHAIN}]
    port: {ports['c']}
    health: /healthz
    startup_timeout: 3s
  b:
    run: {sys.executable} {CHAIN}
    port: {ports['b']}
    health: /healthz
    startup_timeout: 3s
    env:
      NEXT_URL: ${{services.c.url}}
    depends_on: [c]
  a:
    run: [{sys.executable}, {CHAIN}]
    port: {ports['a']}
    health: /healthz
    env:
      NEXT_URL: ${{services.b.url}}
    depends_on: [b]
{extra}"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    ports = dict(zip("abc", free_ports(3), strict=True))
    proj = Project(tmp_path, ports)
    proj.write("laneway.yaml", chain_yaml(ports))
    with proj.running():
        yield proj
