"""A real full disk under a running environment, through the `laneway` CLI (issue 10, item 8).

The whole project folder (`laneway.yaml` and `.laneway/`: store, logs, token) lives on a tmpfs of
a few MB; the services (`tests/apps/chain.py`, outside it) run with their working directory
there. With one sandbox serving and steady load on the baseline and on the sandbox's key, a file
of random bytes fills the disk to the last byte. Then `sandbox apply` and `sandbox delete` must
each fail with one `Error:` line that says the store cannot be written because the disk is full,
change nothing, and print no traceback; the load must not see one failed request while the data
plane's logs meet the full disk; once the file is gone, `apply` works again, and `laneway down`
leaves no process of the project. Mounting needs root: skipped otherwise. Prints its counts
(`pytest -s`).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Project, alive, chain_yaml, free_ports, wait_all_dead

# Enough for what `laneway up` and one sandbox write (about 200 KB: store, logs, token) many
# times over, and small enough to fill in a blink.
DISK_BYTES = 4 * 1024 * 1024
# Requests each load must have answered after the disk filled up: every line they make the
# services print is a write that the data plane's log copier must drop, well past the free
# space left in the last page of each log file.
AFTER_FULL = 300


@dataclass
class Load:
    """One client in a thread of the test, on a keep-alive connection: GET `path` at `port`,
    with the routing key or without, until stopped. An answer is good if it is a 200 with the
    versions `expect` along the chain and the router's `laneway-served-by` `served_by`;
    anything else (an error, another status, another version) is a failure."""

    name: str
    port: int
    key: str | None
    expect: tuple[str, ...]
    served_by: str
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"load {self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        headers = {"baggage": f"laneway-key={self.key}"} if self.key else {}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            try:
                conn.request("GET", "/", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                got = (resp.status, versions(json.loads(body)) if resp.status == 200 else (),
                       resp.getheader("laneway-served-by", ""))
                if got == (200, self.expect, self.served_by):
                    self.ok += 1
                else:
                    self.failed.append(f"{got} {body[:200]!r}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failed.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()

    def describe(self) -> str:
        return f"{self.name}: {self.ok} answered, {len(self.failed)} failed"


def versions(body: Any) -> tuple[str, ...]:
    """The versions along a chain's answer, first hop first."""
    out: list[str] = []
    while isinstance(body, dict):
        out.append(str(body.get("version")))
        body = body.get("next")
    return tuple(out)


@contextlib.contextmanager
def tmpfs(where: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `where`, unmounted on the way out (lazily if a
    process still holds it); skips the test where this machine cannot mount one."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs, and mounting one needs root")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                              str(where)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {where}: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def fill(path: Path) -> int:
    """Write random bytes to `path` until the disk refuses even one more byte; the bytes
    written. The file stays."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written = 0
    chunk = 1 << 20
    try:
        while chunk:
            try:
                written += os.write(fd, os.urandom(chunk))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return written


def owned_processes(state_dir: Path) -> dict[int, str]:
    """Live processes carrying `LANEWAY_OWNER=<state_dir>`; pid -> command line."""
    marker = f"LANEWAY_OWNER={state_dir}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def one_clear_error(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The one `Error:` line of a command that the full disk refused."""
    said = result.stdout + result.stderr
    errors = [ln for ln in said.splitlines() if ln.startswith("Error:")]
    print(f"full disk: `{command}` exited {result.returncode}: {said.strip()!r}")
    assert result.returncode != 0, said
    assert "Traceback" not in said, said
    assert len(errors) == 1, said
    assert "state.db" in errors[0], errors[0]
    assert re.search(r"disk is full|no space left", errors[0], re.I), errors[0]
    assert re.search(r"free .*space", errors[0], re.I), errors[0]
    return errors[0]


def sandbox_yaml(name: str, version: str) -> str:
    return f"name: {name}\nforks:\n  - service: b\n    env: {{VERSION: {version}}}\n"


@pytest.mark.timeout(90)
def test_a_full_disk_refuses_changes_clearly_and_traffic_goes_on(tmp_path: Path) -> None:
    began = time.monotonic()
    took: dict[str, float] = {}  # seconds per step, for the printed counts
    last = [began]

    def lap(what: str) -> None:
        now = time.monotonic()
        took[what] = round(now - last[0], 2)
        last[0] = now

    with tmpfs(tmp_path / "disk", DISK_BYTES) as disk:
        ports = dict(zip("abc", free_ports(3), strict=True))
        project = Project(disk, ports)
        project.write("laneway.yaml", chain_yaml(ports))
        project.write("sb.yaml", sandbox_yaml("sb", "one"))
        project.write("other.yaml", sandbox_yaml("other", "two"))
        state = (disk / ".laneway").resolve()
        filler = disk / "filler"
        loads: list[Load] = []
        try:
            project.run("up", "--detach", timeout=30)
            up_used = used_bytes(disk)
            lap("up")
            key = project.json("sandbox", "apply", "-f", "sb.yaml", "--wait")["routingKey"]
            project.remember_pids()
            before = project.json("sandbox", "list")
            lap("sandbox ready")
            daemon = json.loads((state / "api.json").read_text())
            print(f"tmpfs of {DISK_BYTES // 1024} KB: {up_used // 1024} KB used after "
                  f"`laneway up`, {used_bytes(disk) // 1024} KB with sandbox sb")
            assert used_bytes(disk) < DISK_BYTES // 4, "the tmpfs is too small for this test"

            loads = [
                Load("baseline a->b->c", ports["a"], None, ("baseline",) * 3, "a"),
                Load("keyed a->b@sb->c", ports["a"], key, ("baseline", "one", "baseline"), "a"),
                Load("keyed b@sb->c", ports["b"], key, ("one", "baseline"), "b@sb"),
            ]
            for load in loads:
                load.start()
            wait_until("every load has answers", lambda: all(ld.ok >= 20 for ld in loads), 10)

            filled = fill(filler)
            at_full = [ld.ok for ld in loads]
            assert os.statvfs(disk).f_bavail == 0
            lap("load and fill")
            print(f"disk filled: {filled // 1024} KB of random bytes, 0 bytes free")

            applied = project.run("sandbox", "apply", "-f", "other.yaml", check=False,
                                  timeout=30)
            one_clear_error(applied, "laneway sandbox apply -f other.yaml")
            deleted = project.run("sandbox", "delete", "sb", check=False, timeout=30)
            one_clear_error(deleted, "laneway sandbox delete sb")
            assert project.json("sandbox", "list") == before, "a refused change changed state"
            lap("refused apply and delete")
            wait_until(f"every load answers {AFTER_FULL} requests on the full disk",
                       lambda: all(ld.ok - n >= AFTER_FULL
                                   for ld, n in zip(loads, at_full, strict=True)), 30)
            on_full = {ld.name: ld.ok - n for ld, n in zip(loads, at_full, strict=True)}
            status = project.json("status")
            lap("load on the full disk")
            survivors = {"daemon": alive(daemon["pid"]),
                         "data plane": alive(daemon["dataplanePid"])}

            filler.unlink()
            again = project.json("sandbox", "apply", "-f", "other.yaml", "--wait")
            assert again["status"]["ready"] is True, again["status"]
            other = Load("keyed b@other", ports["b"], again["routingKey"], ("two", "baseline"),
                         "b@other")
            other.start()
            wait_until("the sandbox applied after the disk was freed answers",
                       lambda: other.ok >= 20, 10)
            other.stop()
            loads.append(other)
            lap("freed, applied, served")
            # The data plane dropped the services' output while the disk was full, and says so
            # in each log once it can write again.
            logs = [p for p in sorted((state / "logs").glob("**/*.log")) if "other" not in p.parts]
            wait_until(f"each of {[p.name for p in logs]} notes the output it lost",
                       lambda: all("bytes of output lost" in p.read_text(errors="replace")
                                   for p in logs), 10)
            lap(f"{len(logs)} logs note lost output")
            tracebacks = {p.name: text[-2000:] for p in state.glob("*.log")
                          if "Traceback" in (text := p.read_text(errors="replace"))}
        finally:
            for load in loads:
                load.stop()
            filler.unlink(missing_ok=True)
            if (state / "api.json").exists():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    project.run("down", check=False, timeout=60)
            lap("down")
            with contextlib.suppress(AssertionError):
                wait_until("no process of the project is left", lambda: not owned_processes(state),
                           15)
            left = owned_processes(state)
            for pid in left:  # so that the disk can be unmounted and nothing leaks
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    for load in loads:
        print(load.describe())
    print(f"answered on the full disk: {on_full}")
    print(f"after `laneway down`: {len(left)} processes of the project left {left}; "
          f"took {time.monotonic() - began:.1f}s: {took}")
    for load in loads:
        assert not load.failed, (load.name, load.failed[:5])
    # Neither the daemon nor the data plane went down, nor did supervision stumble.
    assert survivors == {"daemon": True, "data plane": True}, survivors
    assert all(s["restarts"] == 0 and s["supervisionErrors"] == 0
               for s in status["services"]), status["services"]
    assert not tracebacks, tracebacks
    wait_all_dead(project.pids, timeout=1)
    assert not left, left
