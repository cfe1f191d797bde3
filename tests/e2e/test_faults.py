"""Faults against real processes and real traffic, through the `laneway` CLI (issue 10).

`kill -9` of a fork and of a baseline process; the daemon stopped (`SIGSTOP`) and killed under
steady load, then `laneway up` again; a run whose daemon crashed; a stored sandbox whose service
left `laneway.yaml`; a corrupt store. Each asserts the contract (no failed request that the
contract covers, the state afterwards, one clear message and no traceback, nothing left running)
and prints its counts (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import LANEWAY, Project, wait_all_dead
from tests.e2e.test_churn import (
    apply_view,
    cmdline,
    fork_pids,
    make_project,
    parent_of,
    project_processes,
    show,
    up,
    versioned_yaml,
    wait_until,
)
from tests.load import Load, Sample, failures, once, running, summary


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[Project]:
    with up(make_project(tmp_path)) as project:
        yield project


def daemon_pid(project: Project) -> int:
    return int(json.loads((project.root / ".laneway" / "api.json").read_text())["pid"])


def entry(items: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, items)
    return found[0]


def says_killed(record: dict[str, Any]) -> bool:
    text = json.dumps(record)
    return "signal 9" in text or "SIGKILL" in text


def answered_between(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if s.ok and s.start >= start and s.end <= end]


def no_traceback(project: Project, *results: subprocess.CompletedProcess[str]) -> None:
    for result in results:
        assert "Traceback" not in result.stdout + result.stderr, result
    for log in (project.root / ".laneway").glob("*.log"):  # the daemon's, the data plane's
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log}:\n{text[-3000:]}"


@pytest.mark.timeout(90)
def test_a_killed_fork_and_baseline_processes_are_restarted(faults: Project) -> None:
    view = apply_view(faults, "sb", {"b": {"VERSION": "one"}})
    key = view["routingKey"]
    (old_fork,) = fork_pids(view)
    old_base = entry(faults.json("status")["services"], name="a")["pid"]
    killed = time.monotonic()
    os.kill(old_fork, signal.SIGKILL)
    os.kill(old_base, signal.SIGKILL)

    def fork_back() -> dict[str, Any] | None:
        fork = entry(faults.json("sandbox", "get", "sb")["status"]["forks"], service="b")
        return fork if fork["phase"] == "ready" and fork["pid"] not in (None, old_fork) \
            else None

    def base_back() -> dict[str, Any] | None:
        svc = entry(faults.json("status")["services"], name="a")
        return svc if svc["phase"] == "ready" and svc["pid"] not in (None, old_base) else None

    fork = wait_until("the killed fork runs again and is ready", fork_back, timeout=20,
                      every=0.2)
    base = wait_until("the killed baseline process runs again and is ready", base_back,
                      timeout=20, every=0.2)
    back = time.monotonic()
    keyed = once(faults.url("b"), key)
    chain = once(faults.url("a") + "/chain")
    print(f"kill -9 of fork {old_fork} and baseline {old_base}: both back in "
          f"{back - killed:.2f}s; fork {fork['pid']} restarts={fork['restarts']} "
          f"message={fork['message']!r}; baseline a {base['pid']} restarts={base['restarts']} "
          f"message={base['message']!r}; keyed answer {keyed.describe()}; baseline chain "
          f"{chain.describe()}")
    assert (keyed.status, keyed.served_by, keyed.versions) == (200, "b@sb", ("one",))
    assert (chain.status, chain.versions) == (200, ("base", "base"))
    assert fork["restarts"] >= 1
    assert base["restarts"] >= 1
    assert says_killed(fork), f"the fork's status does not say why it restarted: {fork}"
    assert says_killed(base), f"the service's status does not say why it restarted: {base}"


@pytest.mark.timeout(90)
def test_b_a_stopped_daemon_does_not_stop_traffic(faults: Project) -> None:
    view = apply_view(faults, "sb", {"b": {"VERSION": "one"}})
    key = view["routingKey"]
    loads = [
        Load(faults.url("b"), key, clients=2, name="keyed b"),
        Load(faults.url("a") + "/chain", key, clients=1, name="keyed a->b@sb"),
        Load(faults.url("a") + "/chain", clients=2, name="baseline a->b"),
        Load(faults.url("b"), clients=1, keepalive=False, pause=0.01,
             name="baseline b, a connection per request"),
    ]
    daemon = daemon_pid(faults)
    with running(*loads):
        os.kill(daemon, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            time.sleep(5)  # holding the stop is the test, not synchronisation
        finally:
            os.kill(daemon, signal.SIGCONT)
            resumed = time.monotonic()
        loads[0].wait_for(50)
    during = {load.name: len(answered_between(load.snapshot(), stopped + 0.1, resumed))
              for load in loads}
    for load in loads:
        print(summary(load, load.snapshot()))
    print(f"daemon {daemon} stopped for {resumed - stopped:.2f}s; answered while it was "
          f"stopped: {during}")
    for load in loads:
        assert not failures(load.snapshot()), show(failures(load.snapshot()))
    assert all(n >= 20 for n in during.values()), during
    # The daemon works again: an update goes through and is served.
    apply_view(faults, "sb", {"b": {"VERSION": "two"}})
    answer = once(faults.url("b"), key)
    assert (answer.status, answer.served_by, answer.versions) == (200, "b@sb", ("two",))


@pytest.mark.timeout(120)
def test_c_a_killed_daemon_then_up_then_down(tmp_path: Path) -> None:
    with up(make_project(tmp_path, "abs")) as project:
        view = apply_view(project, "sb", {"b": {"VERSION": "one"}, "s": {"VERSION": "one"}})
        key = view["routingKey"]
        loads = [
            Load(project.url("a") + "/chain", key, clients=2, name="keyed a->b@sb"),
            Load(project.url("s"), key, clients=1, name="keyed s@sb (shell)"),
            Load(project.url("a") + "/chain", clients=2, name="baseline a->b"),
            Load(project.url("s"), clients=1, keepalive=False, pause=0.01,
                 name="baseline s (shell), a connection per request"),
        ]
        daemon = daemon_pid(project)
        with running(*loads):
            os.kill(daemon, signal.SIGKILL)
            killed = time.monotonic()
            wait_all_dead({daemon})
            loads[0].wait_for(30)
            again = project.run("up", "--detach", "--timeout", "20", check=False)
            upped = time.monotonic()
            loads[0].wait_for(50)
        for load in loads:
            print(summary(load, load.snapshot()))
        during = {load.name: len(answered_between(load.snapshot(), killed, upped))
                  for load in loads}
        print(f"daemon {daemon} killed; `laneway up` {upped - killed:.2f}s later exited "
              f"{again.returncode}; answered in between: {during}")
        assert again.returncode == 0, again.stdout + again.stderr
        for load in loads:
            assert not failures(load.snapshot()), show(failures(load.snapshot()))
        assert all(n > 0 for n in during.values()), during
        sandbox = project.json("sandbox", "get", "sb")
        assert sandbox["status"]["ready"] is True, sandbox["status"]
        assert sandbox["routingKey"] == key
        for service, url in (("b", project.url("a") + "/chain"), ("s", project.url("s"))):
            answer = once(url, key)
            assert (answer.status, answer.versions[-1:]) == (200, ("one",)), \
                (service, answer.describe())

        before = project_processes(project.root)
        shell_children = {pid: cmd for pid, cmd in before.items() if "versioned.py" in cmd
                          and cmdline(parent_of(pid)).startswith(("sh ", "/bin/sh "))}
        print(f"before `laneway down`: {len(before)} processes of the project, "
              f"{len(shell_children)} of them children of a `shell: true` command")
        assert shell_children, before
        project.run("down")
        left = left_after(project.root, 15)
        print(f"after `laneway down`: {len(left)} processes of the project left: {left}")
        assert not left


@pytest.mark.timeout(90)
def test_d_a_run_interrupted_by_a_crash(faults: Project) -> None:
    apply_view(faults, "sb", {"b": {"VERSION": "one"}})
    script = textwrap.dedent("""
        import os, pathlib, time, urllib.request
        pathlib.Path("command.pid").write_text(str(os.getpid()))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(os.environ["LANEWAY_URL_B"],
                                         headers={"baggage": os.environ["LANEWAY_BAGGAGE"]})
        end = time.time() + 30
        n = 0
        while time.time() < end:
            n += 1
            try:
                body = opener.open(request, timeout=5).read().decode()
            except Exception as exc:
                body = repr(exc)
            print(f"request {n}: {body}", flush=True)
            time.sleep(0.3)
    """)
    out = (faults.root / "run.out").open("w")
    err = (faults.root / "run.err").open("w")
    client = subprocess.Popen([LANEWAY, "run", "--sandbox", "sb", "-o", "json", "--",
                               sys.executable, "-c", script], cwd=faults.root, stdout=out,
                              stderr=err, text=True)
    try:
        def running_run() -> dict[str, Any] | None:
            runs = [r for r in faults.json("runs", "list") if r["status"] == "running"]
            return runs[0] if runs else None

        run = wait_until("the run is running", running_run, timeout=20, every=0.2)
        output = Path(run["output_path"])
        wait_until("the command made 3 keyed requests", lambda: output.exists() and
                   output.read_text().count("request ") >= 3, timeout=20)
        command = int((faults.root / "command.pid").read_text())
        printed = output.read_text().splitlines()
        daemon = daemon_pid(faults)
        os.kill(daemon, signal.SIGKILL)
        wait_all_dead({daemon})
        faults.run("up", "--detach", "--timeout", "20")

        def interrupted() -> dict[str, Any] | None:
            report: dict[str, Any] = faults.json("runs", "get", run["id"])
            return report if report["status"] == "interrupted" else None

        try:
            report = wait_until("the run is reported interrupted", interrupted, timeout=15,
                                every=0.2)
        finally:
            last = faults.json("runs", "get", run["id"])
            print(f"run {run['id']}: {len(printed)} lines printed before the crash; after "
                  f"`laneway up`: status={last['status']} verdict={last['verdict']} "
                  f"forks_reached={last.get('forks_reached')} hops={last.get('hops')} "
                  f"output_tail={len(last.get('output_tail') or [])} lines; command process "
                  f"{command} alive={command in project_processes(faults.root)}")
        assert report["id"] == run["id"]
        assert report["sandbox"] == "sb"
        assert report["command_line"] == run["command_line"]
        assert Path(report["output_path"]).read_text().startswith(printed[0])
        kept = report.get("output_tail") or []
        assert any(line.startswith("request ") and '"version": "one"' in line
                   for line in kept), \
            f"the interrupted run's report lost the output it had: output_tail={kept}"
        assert "b@sb" in report["forks_reached"], report["forks_reached"]
        wait_all_dead({command})
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            client.wait(10)
        if client.poll() is None:
            client.kill()
            client.wait(10)
        out.close()
        err.close()
        said = (faults.root / "run.err").read_text().strip().splitlines()
        print(f"the `laneway run` that was waiting exited {client.returncode}: "
              f"{said[-1] if said else ''!r}")


@pytest.mark.timeout(90)
def test_e_a_sandbox_of_a_removed_service(tmp_path: Path) -> None:
    with up(make_project(tmp_path, "abc")) as project:
        apply_view(project, "sb", {"b": {"VERSION": "one"}})
        project.run("down")
        # b goes, and a with it (it depends on b); c stays.
        project.write("laneway.yaml", versioned_yaml({"c": project.ports["c"]}))
        again = project.run("up", "--detach", "--timeout", "20", check=False)
        assert again.returncode == 0, again.stdout + again.stderr
        shown = project.run("sandbox", "get", "sb", "-o", "json")
        sandbox = json.loads(shown.stdout)
        status = project.json("status")
        message = sandbox["status"]["message"]
        print(f"`laneway up` without b: exit {again.returncode}; sandbox sb "
              f"{sandbox['status']['phase']}: {message!r}; services "
              f"{[(s['name'], s['phase']) for s in status['services']]}")
        assert sandbox["status"]["phase"] == "failed", sandbox["status"]
        assert re.search(r"\bb\b", message), message
        assert re.search(r"delete|apply|laneway\.yaml", message), message
        assert entry(status["sandboxes"], name="sb")["phase"] == "failed"
        assert [(s["name"], s["phase"]) for s in status["services"]] == [("c", "ready")]
        deleted = project.run("sandbox", "delete", "sb")
        listed = project.run("sandbox", "list", "-o", "json")
        assert json.loads(listed.stdout) == []
        no_traceback(project, again, shown, deleted, listed)


def _damage_a_page(db: Path, data: bytes) -> tuple[bytes, int]:
    """`data` with one page of the `records` table in the middle overwritten with garbage."""
    copy = db.parent.parent / "inspect.db"
    copy.write_bytes(data)
    with sqlite3.connect(copy) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = [row[0] for row in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'records' ORDER BY pageno")]
    conn.close()
    copy.unlink()
    assert len(pages) >= 3, f"the records table is too small to damage its middle: {pages}"
    page = pages[len(pages) // 2]
    garbage = random.Random(page).randbytes(page_size)
    offset = (page - 1) * page_size
    return data[:offset] + garbage + data[offset + page_size:], page


def _up_refuses(project: Project, case: str, content: bytes) -> None:
    db = project.root / ".laneway" / "state.db"
    for side in ("state.db-wal", "state.db-shm"):  # of the case before, if any
        db.with_name(side).unlink(missing_ok=True)
    db.write_bytes(content)
    result = project.run("up", "--detach", check=False)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    print(f"{case}: `laneway up` exited {result.returncode}: {result.stderr.strip()!r}")
    assert result.returncode != 0
    assert len(errors) == 1, result.stderr
    assert "state.db" in errors[0], errors[0]
    assert re.search(r"move|rename|remov|delet|restor|back ?up", errors[0], re.I), errors[0]
    no_traceback(project, result)
    assert db.read_bytes() == content, "the corrupt store was changed"
    assert not (project.root / ".laneway" / "api.json").exists()
    assert not left_after(project.root, 5), "a failed `laneway up` left processes running"


def left_after(root: Path, timeout: float) -> dict[int, str]:
    """The processes of the project still running after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    left = project_processes(root)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = project_processes(root)
    return left


@pytest.mark.timeout(90)
def test_f_a_corrupt_store_is_one_clear_error(faults: Project) -> None:
    # Some records spanning several pages, so that a page in the middle of them can be damaged.
    labels = {f"label-{i:02d}": f"{i:02d}" + "x" * 60 for i in range(40)}
    for n in range(3):
        faults.write(f"g{n}.yaml", json.dumps({"name": f"group-{n}", "labels": labels,
                                               "match": {"labels": {"team": f"t{n}"}}}))
        faults.run("routegroup", "apply", "-f", f"g{n}.yaml")
    faults.run("down")
    db = faults.root / ".laneway" / "state.db"
    wal = db.with_name("state.db-wal")
    if wal.exists() and wal.stat().st_size:  # pages still in the log: into the file with them
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    original = db.read_bytes()
    garbage = random.Random(7).randbytes(16384)
    _up_refuses(faults, "state.db overwritten with garbage", garbage)
    damaged, page = _damage_a_page(db, original)
    _up_refuses(faults, f"page {page} of a real state.db ({len(original)} bytes) damaged",
                damaged)
