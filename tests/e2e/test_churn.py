"""Churn against real processes and real traffic, through the `laneway` CLI (issue 10).

Sandboxes are deleted and re-created, updated under load (one fork and two), deleted with
requests in flight and applied and deleted from several threads at once. Each test asserts the
contract: once `apply --wait` returns, every request with the key is answered by exactly that
spec; no request the contract covers fails; a two-fork sandbox never answers with mixed versions
unless the request was in flight at the switch; nothing is left running. Each prints its counts
(`pytest -s`). The services are `tests/apps/versioned.py`: `b`, and `a` which calls `b` on
`/chain`. The helpers at the top are shared with `test_faults.py`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Project, alive, free_ports, wait_all_dead
from tests.load import Load, Sample, burst, failures, once, running, summary

VERSIONED = str(Path(__file__).parents[1] / "apps" / "versioned.py")
ORDER = ("one", "two", "three")


# --- the project: versioned services, and every process that belongs to it -------------------


def versioned_yaml(ports: dict[str, int]) -> str:
    """`b`, `a` -> `b` (when `a` has a port), `c` alone and `s`, a `shell: true` service whose
    command leaves a child (when they have one)."""
    py = sys.executable
    out = ["name: churn", "services:"]
    if "b" in ports:
        out += ["  b:", f"    run: [{py}, {VERSIONED}]", f"    port: {ports['b']}",
                "    health: /healthz", "    startup_timeout: 10s", "    env: {VERSION: base}"]
    if "a" in ports:
        out += ["  a:", f"    run: [{py}, {VERSIONED}]", f"    port: {ports['a']}",
                "    health: /healthz", "    startup_timeout: 10s", "    env:",
                "      VERSION: base", "      NEXT_URL: ${services.b.url}",
                "    depends_on: [b]"]
    if "c" in ports:
        out += ["  c:", f"    run: [{py}, {VERSIONED}]", f"    port: {ports['c']}",
                "    health: /healthz", "    startup_timeout: 10s", "    env: {VERSION: base}"]
    if "s" in ports:
        out += ["  s:", f'    run: "{py} {VERSIONED} & wait"', "    shell: true",
                f"    port: {ports['s']}", "    health: /healthz", "    startup_timeout: 10s",
                "    env: {VERSION: base}"]
    return "\n".join(out) + "\n"


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return "?"


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def live_pids() -> Iterator[int]:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and alive(int(entry)):
            yield int(entry)


def project_processes(root: Path) -> dict[int, str]:
    """Every live process of the project: `LANEWAY_OWNER=<its .laneway>` in its environment, or
    a working directory inside the project folder; pid -> command line."""
    owner = str((root / ".laneway").resolve())
    folder = str(root.resolve())
    found = {}
    for pid in live_pids():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if environ(pid).get("LANEWAY_OWNER") == owner or cwd == folder or \
                cwd.startswith(folder + "/"):
            found[pid] = cmdline(pid)
    return found


def fork_processes(root: Path, sandbox: str,
                   service: str | None = None) -> dict[int, dict[str, str]]:
    """Live processes of the project started for a fork of `sandbox` (by the env laneway gives
    forks); pid -> environment."""
    out = {}
    for pid in project_processes(root):
        env = environ(pid)
        if env.get("LANEWAY_SANDBOX") == sandbox and "PORT" in env and \
                (service is None or env.get("LANEWAY_SERVICE") == service):
            out[pid] = env
    return out


def wait_until(what: str, check: Callable[[], Any], timeout: float = 15.0,
               every: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what} (last: {result!r})")
        time.sleep(every)


def settle_leftovers(root: Path, grace: float = 10.0) -> dict[int, str]:
    """What of the project still runs after `grace` seconds; those are killed (so that a failed
    test does not poison the next) and returned."""
    deadline = time.monotonic() + grace
    left = project_processes(root)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = project_processes(root)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    if left:
        wait_all_dead(set(left), timeout=5)
    return left


@contextlib.contextmanager
def up(project: Project) -> Iterator[Project]:
    """`laneway up --detach`; on the way out `laneway down`, and then nothing of the project may
    be running (found by `project_processes`, plus every pid in `project.pids`): what is, is
    killed, and the test fails unless it failed already. A test may have killed or stopped the
    daemon itself."""
    api = project.root / ".laneway" / "api.json"
    failed = False
    try:
        project.run("up", "--detach", "--timeout", "30")
        project.pids.add(int(json.loads(api.read_text())["pid"]))
        yield project
    except BaseException:
        failed = True
        raise
    finally:
        with contextlib.suppress(OSError, ValueError, KeyError):
            project.pids.add(int(json.loads(api.read_text())["pid"]))
        if api.exists():
            project.run("down", check=False, timeout=60)
        left = settle_leftovers(project.root)
        stragglers = {pid: cmdline(pid) for pid in project.pids if alive(pid)}
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left |= stragglers
        if left:
            print(f"killed what was left running: {left}")
            if not failed:
                raise AssertionError(f"left running after the test: {left}")


def make_project(root: Path, services: str = "ab") -> Project:
    ports = dict(zip(services, free_ports(len(services)), strict=True))
    project = Project(root, ports)
    project.write("laneway.yaml", versioned_yaml(ports))
    return project


@pytest.fixture
def churn(tmp_path: Path) -> Iterator[Project]:
    with up(make_project(tmp_path)) as project:
        yield project


# --- sandboxes through the CLI ------------------------------------------------------------------


def sandbox_yaml(name: str, forks: dict[str, dict[str, str]]) -> str:
    lines = [f"name: {name}", "forks:"]
    for service, env in forks.items():
        lines += [f"  - service: {service}", f"    env: {json.dumps(env)}"]
    return "\n".join(lines) + "\n"


def apply(project: Project, name: str, forks: dict[str, dict[str, str]], *,
          file: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    path = project.write(file or f"{name}.yaml", sandbox_yaml(name, forks))
    return project.run("sandbox", "apply", "-f", path.name, "--wait", "--timeout", "30",
                       "-o", "json", check=check, timeout=60)


def apply_view(project: Project, name: str, forks: dict[str, dict[str, str]]) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(apply(project, name, forks).stdout)
    assert view["status"]["ready"] is True, view["status"]
    return view


def fork_pids(view: dict[str, Any]) -> set[int]:
    return {f["pid"] for f in view["status"]["forks"] if f.get("pid")}


def allowed(start: float, windows: list[tuple[str, float, float]], first: str) -> set[str]:
    """The versions a request that started at `start` may be answered by: the version of the
    last apply that had returned by then, or a later one (if the request was still in flight
    when a later apply switched); never an older one. `windows` are (version, invoked,
    returned) of the applies in order, after the sandbox was created with `first`."""
    versions = [first] + [version for version, _, _ in windows]
    current = 0
    for i, (_, _, returned) in enumerate(windows, 1):
        if start >= returned:
            current = i
    return set(versions[current:])


def switch_violations(samples: list[Sample], old: str, new: str) -> list[Sample]:
    """The answers around a switch of a two-fork sandbox from `old` to `new` (versions of a,
    then b) that no single switch moment T explains.

    With one routes version for both forks, a request that started after T sees (new, new), one
    that ended before T (old, old), and only one in flight at T may see (old, new): a routed
    first, b after the switch. (new, old) is never possible: b is routed after a. So T must lie
    after the start of every (old, old) and (old, new) answer and before the end of every
    (old, new) and (new, new) answer."""
    ok = [s for s in samples if s.ok]
    reversed_mix = [s for s in ok if s.versions == (new, old)]
    after_starts = [s for s in ok if s.versions in ((old, old), (old, new))]
    before_ends = [s for s in ok if s.versions in ((old, new), (new, new))]
    if not after_starts or not before_ends:
        return reversed_mix
    latest_start = max(after_starts, key=lambda s: s.start)
    earliest_end = min(before_ends, key=lambda s: s.end)
    if latest_start.start <= earliest_end.end:
        return reversed_mix
    # No T fits: the answers that started after the earliest end of a newer answer and yet
    # saw an older fork are the ones that contradict a single switch.
    return reversed_mix + [s for s in after_starts if s.start > earliest_end.end]


def show(samples: Iterable[Sample], limit: int = 5) -> str:
    listed = list(samples)
    return "\n".join(s.describe() for s in listed[:limit]) + (
        f"\n... {len(listed) - limit} more" if len(listed) > limit else "")


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_recreated_sandbox_serves_only_its_new_spec(churn: Project) -> None:
    url = churn.url("b")
    view = apply_view(churn, "sb", {"b": {"VERSION": "one"}})
    previous_key = view["routingKey"]
    for round_no, version in enumerate(("two", "one", "two"), 1):
        churn.run("sandbox", "delete", "sb")
        view = apply_view(churn, "sb", {"b": {"VERSION": version}})
        key = view["routingKey"]
        samples = burst(url, key, 200)
        wrong = [s for s in samples
                 if not (s.ok and s.versions == (version,) and s.served_by == "b@sb")]
        shown = churn.json("sandbox", "get", "sb")
        print(f"round {round_no}: re-created with VERSION {version} "
              f"({'new' if key != previous_key else 'same'} key): {len(samples)} keyed "
              f"requests, {len(wrong)} not answered by {version}: "
              f"{Counter(f'{s.served_by}:{s.versions or s.status}' for s in samples)}")
        assert len(samples) == 200
        assert not wrong, show(wrong)
        assert shown["forks"][0]["env"]["VERSION"] == version, shown["forks"]
        assert shown["status"]["ready"] is True, shown["status"]
        for pid in fork_pids(shown):
            assert environ(pid).get("VERSION") == version, (pid, cmdline(pid))
        if key != previous_key:  # the old incarnation's key selects nothing any more
            old = once(url, previous_key)
            assert (old.status, old.served_by, old.versions) == (200, "b", ("base",)), \
                old.describe()
        previous_key = key


@pytest.mark.timeout(90)
def test_b_updates_of_a_one_fork_sandbox_under_load(churn: Project) -> None:
    # DRAIN=0: a replaced fork exits at once on SIGTERM; only laneway may stop sending it
    # requests and let it finish the ones it has before it stops it.
    view = apply_view(churn, "sb", {"b": {"VERSION": "one", "DRAIN": "0"}})
    key = view["routingKey"]
    keyed = Load(churn.url("b"), key, clients=3, name="keyed")
    keyed_new = Load(churn.url("b"), key, clients=1, keepalive=False, pause=0.01,
                     name="keyed, a connection per request")
    base = Load(churn.url("a") + "/chain", clients=2, name="baseline a->b")
    base_new = Load(churn.url("b"), clients=1, keepalive=False, pause=0.01,
                    name="baseline b, a connection per request")
    windows: list[tuple[str, float, float]] = []
    with running(keyed, keyed_new, base, base_new):
        for version in ("two", "three"):
            invoked = time.monotonic()
            apply_view(churn, "sb", {"b": {"VERSION": version, "DRAIN": "0"}})
            windows.append((version, invoked, time.monotonic()))
            keyed.wait_for(100)
    for version, invoked, returned in windows:
        print(f"apply VERSION {version}: --wait took {returned - invoked:.2f}s")
    keyed_samples = keyed.snapshot() + keyed_new.snapshot()
    base_samples = base.snapshot() + base_new.snapshot()
    for load in (keyed, keyed_new, base, base_new):
        print(summary(load, load.snapshot()))
    wrong = [s for s in keyed_samples if s.ok and not (
        s.served_by == "b@sb" and len(s.versions) == 1 and
        s.versions[0] in allowed(s.start, windows, "one"))]
    after = {v: sum(1 for s in keyed_samples if s.start >= returned and
                    (i + 1 == len(windows) or s.start < windows[i + 1][1]))
             for i, (v, _, returned) in enumerate(windows)}
    print(f"keyed requests started after each apply returned: {after}; "
          f"answered by another generation: {len(wrong)}")
    assert not failures(keyed_samples), show(failures(keyed_samples))
    assert not failures(base_samples), show(failures(base_samples))
    assert not wrong, show(wrong)
    assert all(v > 0 for v in after.values()), after
    not_baseline = [s for s in base_samples if set(s.versions) != {"base"} or
                    s.served_by not in ("a", "b")]
    assert not not_baseline, show(not_baseline)


@pytest.mark.timeout(90)
def test_c_a_two_fork_sandbox_switches_its_forks_together(churn: Project) -> None:
    view = apply_view(churn, "sb", {"a": {"VERSION": "one", "DRAIN": "0"},
                                    "b": {"VERSION": "one", "DRAIN": "0"}})
    key = view["routingKey"]
    keyed = Load(churn.url("a") + "/chain", key, clients=4, name="keyed a->b")
    base = Load(churn.url("a") + "/chain", clients=2, name="baseline a->b")
    windows: list[tuple[str, float, float]] = []
    with running(keyed, base):
        for version in ("two", "three"):
            invoked = time.monotonic()
            apply_view(churn, "sb", {"a": {"VERSION": version, "DRAIN": "0"},
                                     "b": {"VERSION": version, "DRAIN": "0"}})
            windows.append((version, invoked, time.monotonic()))
            keyed.wait_for(100)
    samples = keyed.snapshot()
    print(summary(keyed, samples))
    print(summary(base, base.snapshot()))
    wrong = [s for s in samples if s.ok and not (
        s.served_by == "a@sb" and len(s.versions) == 2 and
        set(s.versions) <= allowed(s.start, windows, "one"))]
    mixed = [s for s in samples if s.ok and len(set(s.versions)) > 1]
    unexplained: list[Sample] = []
    for old, new in itertools.pairwise(ORDER):
        unexplained += switch_violations(samples, old, new)
    print(f"keyed: {len(mixed)} answers with mixed versions, {len(unexplained)} of them (or "
          "of the answers around them) not explained by one switch moment; "
          f"{len(wrong)} from another generation than the last apply's")
    assert not failures(samples), show(failures(samples))
    assert not failures(base.snapshot()), show(failures(base.snapshot()))
    assert not unexplained, show(unexplained, 10)
    assert not wrong, show(wrong)
    not_baseline = [s for s in base.snapshot()
                    if (s.versions, s.served_by) != (("base", "base"), "a")]
    assert not not_baseline, show(not_baseline)


@pytest.mark.timeout(90)
def test_d_delete_with_requests_in_flight(churn: Project) -> None:
    # DRAIN=0: the fork exits at once on SIGTERM, so only laneway's own drain can save them.
    view = apply_view(churn, "sb", {"b": {"VERSION": "one", "DRAIN": "0"}})
    key = view["routingKey"]
    pids = fork_pids(view)
    url = churn.url("b")
    answers: list[Sample] = []
    lock = threading.Lock()

    def slow() -> None:
        sample = once(url + "/slow?ms=1500", key)
        with lock:
            answers.append(sample)

    threads = [threading.Thread(target=slow, daemon=True) for _ in range(10)]
    for thread in threads:
        thread.start()
    wait_until("10 slow requests in flight at the fork",
               lambda: (once(url + "/inflight", key).payload or {}).get("inflight") == 10,
               timeout=10)
    deleted = time.monotonic()
    churn.run("sandbox", "delete", "sb")
    returned = time.monotonic()
    for thread in threads:
        thread.join(20)
    after: list[Sample] = []

    def on_baseline() -> bool:
        sample = once(url, key)
        after.append(sample)
        return sample.served_by == "b" and sample.versions == ("base",)

    wait_until("the key routes to the baseline", on_baseline, timeout=10)
    wait_all_dead(pids)
    gone = time.monotonic()
    ok = [s for s in answers if s.ok and s.served_by == "b@sb" and s.versions == ("one",)]
    print(f"delete with 10 requests in flight: delete returned in {returned - deleted:.2f}s; "
          f"{len(ok)} of {len(answers)} answered 200 by b@sb (one): "
          f"{Counter(s.status or s.error for s in answers)}; keyed requests after the delete: "
          f"{len(after)}, {len(failures(after))} failed; fork gone "
          f"{gone - deleted:.2f}s after the delete")
    assert len(ok) == 10, show(s for s in answers if s not in ok)
    assert not failures(after), show(failures(after))
    assert not fork_processes(churn.root, "sb"), fork_processes(churn.root, "sb")


def _agreement(project: Project, url: str, keys: set[str],
               versions: set[str]) -> tuple[bool, str]:
    """Do store, view, routing and processes tell the same story about `sb`, and is it one of
    `versions` (the round's applies: whichever of its mutations came last decides)?"""
    listed = [s for s in project.json("sandbox", "list") if s["name"] == "sb"]
    running_forks = fork_processes(project.root, "sb", "b")
    if not listed:
        for key in keys:
            answer = once(url, key)
            if (answer.status, answer.served_by) != (200, "b"):
                return False, f"deleted, but key {key} gets {answer.describe()}"
        if running_forks:
            return False, f"deleted, but fork processes run: {sorted(running_forks)}"
        return True, "deleted"
    sb = listed[0]
    version = sb["forks"][0]["env"]["VERSION"]
    if version not in versions:
        return False, f"exists with VERSION {version}, which no apply of this round wrote"
    if sb["status"]["phase"] != "ready":
        return False, f"{sb['status']['phase']}: {sb['status']['message']}"
    answer = once(url, sb["routingKey"])
    if (answer.status, answer.served_by, answer.versions) != (200, "b@sb", (version,)):
        return False, f"view says {version}, the key gets {answer.describe()}"
    if set(running_forks) != fork_pids(sb):
        return False, f"view says pids {fork_pids(sb)}, running: {sorted(running_forks)}"
    if any(env.get("VERSION") != version for env in running_forks.values()):
        return False, f"a fork process runs another version than {version}"
    for key in keys - {sb["routingKey"]}:
        stale = once(url, key)
        if stale.served_by != "b":
            return False, f"the old key {key} gets {stale.describe()}"
    return True, f"exists, serves {version}"


@pytest.mark.timeout(120)
def test_e_concurrent_apply_and_delete_of_one_name_agree_afterwards(churn: Project) -> None:
    url = churn.url("b")
    keys: set[str] = set()
    outcomes: Counter[str] = Counter()
    for round_no in range(10):
        ops: list[tuple[str, str]] = [("apply", f"r{round_no}x"), ("delete", ""),
                                      ("apply", f"r{round_no}y"), ("delete", "")]
        random.shuffle(ops)
        for i, (kind, version) in enumerate(ops):
            if kind == "apply":
                churn.write(f"e{i}.yaml", sandbox_yaml("sb", {"b": {"VERSION": version}}))
        barrier = threading.Barrier(len(ops))
        results: dict[int, subprocess.CompletedProcess[str]] = {}

        def op(i: int, kind: str, barrier: threading.Barrier = barrier,
               results: dict[int, subprocess.CompletedProcess[str]] = results) -> None:
            barrier.wait()
            if kind == "apply":
                results[i] = churn.run("sandbox", "apply", "-f", f"e{i}.yaml", "--wait",
                                       "--timeout", "30", "-o", "json", check=False,
                                       timeout=60)
            else:
                results[i] = churn.run("sandbox", "delete", "sb", check=False)

        threads = [threading.Thread(target=op, args=(i, kind), daemon=True)
                   for i, (kind, _) in enumerate(ops)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(70)
        for i, result in results.items():
            assert "Traceback" not in result.stdout + result.stderr, result
            if ops[i][0] == "apply" and result.stdout.strip().startswith("{"):
                keys.add(json.loads(result.stdout)["routingKey"])
        last: list[str] = []

        versions = {v for kind, v in ops if kind == "apply"}

        def agreed(keys: set[str] = keys, last: list[str] = last,
                   versions: set[str] = versions) -> bool:
            ok, story = _agreement(churn, url, keys, versions)
            last[:] = [story]
            return ok

        try:
            wait_until("store, view, routing and processes agree", agreed, timeout=30,
                       every=0.2)
        finally:
            codes = " ".join(f"{kind}{('=' + v) if v else ''}:{results[i].returncode}"
                             if i in results else f"{kind}:hung"
                             for i, (kind, v) in enumerate(ops))
            print(f"round {round_no + 1}: {codes} -> {last[0] if last else '?'}")
        outcomes[last[0].split(",")[0]] += 1
    status = churn.json("status")
    listed = churn.json("sandbox", "list")
    assert [s["name"] for s in status["sandboxes"]] == [s["name"] for s in listed]
    print(f"10 rounds of concurrent apply/delete, all agreeing afterwards: {dict(outcomes)}")
