"""Runs: a test command executed against a sandbox (or route group), with its isolation report.

The control plane runs the command itself (so the CLI and MCP clients only start a run and
poll it, and nothing blocks a client for long): with the routing key in its environment and an
injecting proxy as `HTTP_PROXY`, its output on disk, and, when it ends, a report built from the
hops it caused, the forks' logs and its JUnit results (`core.runs` does the reasoning).

A run outlives nothing but keeps what it found: while the command runs, the report is saved with
what it has collected so far every couple of seconds; a daemon that shuts down stops the command
and ends the run `interrupted`, and a daemon that starts ends every run a crashed one left
`running` the same way, after stopping the command it left behind (every command carries
`LANEWAY_RUN_ID` and the environment's owner mark, so its processes are found wherever they went).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from laneway.control.diffs import replay_diff, thresholds_of
from laneway.control.errors import Invalid, NotFound, StoreUnavailable
from laneway.control.plane import ControlPlane
from laneway.core.inject_proxy import InjectingProxy
from laneway.core.processes import find_marked, owner_env, stop_processes, terminate_group
from laneway.core.runs import (
    RUN_ID_ENV,
    command_environment,
    failed_tests,
    hop_findings,
    is_error_line,
    new_report,
    unreached_reason,
    verdict_of,
)

__all__ = ["RUN_ID_ENV", "RunManager", "RunSpec"]

log = logging.getLogger("laneway.runs")

OUTPUT_TAIL = 40
OUTPUT_TAIL_BYTES = 256 * 1024
FORK_ERRORS = 50
HOP_SETTLE = 0.1  # routers hand hop records to the data plane's buffer every 50 ms
PROGRESS_EVERY = 2.0  # seconds between saves of a running run's report (one store write each)
_CRASHED_NOTE = ("the daemon stopped while this run was running (it crashed or was "
                 "killed), so the run has no verdict; the report keeps what it had collected "
                 "until then.")
_SHUTDOWN_NOTE = ("the daemon shut down while this run was running and stopped its "
                  "command, so the run has no verdict; the report keeps what it had collected. "
                  "Run it again after `laneway up`.")


class RunSpec(BaseModel):
    """What to run, against what."""

    model_config = ConfigDict(extra="forbid")

    sandbox: str | None = None
    routegroup: str | None = None
    command: list[str] | str = Field(description="argv list, or a line run by /bin/sh -c")
    cwd: str | None = None
    env: dict[str, str] | None = Field(
        default=None, description="the environment to run with (default: the daemon's)")
    timeout_s: float | None = Field(default=None, gt=0, le=86400)
    allow_unreached: bool = False
    # Replay the run's own requests against the baseline and the sandbox and diff the answers
    # (control/diffs.py); `diff_unsafe` replays non-idempotent methods too.
    diff: bool = False
    diff_unsafe: bool = False
    # Every router captures the run's keyed requests while it runs, at every service
    # (`laneway captures --run ID`, `laneway diff --capture ID`).
    capture: bool = False


class RunManager:
    """Starts runs and keeps their reports; made once per daemon, closed on its shutdown.

    `state_dir` is the environment's `.laneway/` folder (the owner mark of the commands it
    starts); by default the parent of `runs_dir`.
    """

    def __init__(self, control: ControlPlane, runs_dir: Path, state_dir: Path | None = None,
                 *, progress_every: float = PROGRESS_EVERY,
                 end_interrupted: bool = True) -> None:
        self.control = control
        self.runs_dir = runs_dir
        self.state_dir = state_dir if state_dir is not None else runs_dir.parent
        self.progress_every = progress_every
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._closing = False
        self._interrupting: set[str] = set()  # runs whose command close() stopped
        self._unsaved: set[str] = set()  # runs whose last save failed (logged once)
        self.interrupted = self.end_interrupted() if end_interrupted else []

    def end_interrupted(self) -> list[str]:
        """End the runs that a stopped or crashed daemon left `running`, after stopping what is
        left of their commands; returns their ids. Runs before the API serves: no run of
        this daemon exists yet."""
        ended = []
        for report in self.control.store.runs_with_status("running"):
            # Blocks for as long as the leftovers take to exit on SIGTERM (at most 5 s).
            stopped = self._stop_leftovers(report["id"])
            note = _CRASHED_NOTE
            if stopped:
                note += f" Its command was still running: laneway stopped it ({len(stopped)} " \
                        "processes)."
            note += " Run it again."
            # What it had collected: its output is on disk, its hops in the data plane's buffer
            # (read before this, when the daemon started); the fork errors saved last are kept
            # (the log offsets they were read from died with the daemon).
            run_dir = Path(str(report.get("output_path", ""))).parent
            found = self._collected(report, list(report.get("forks_reached") or {}), {},
                                    run_dir, time.time() - float(report["started_at"]),
                                    int(report.get("proxied_requests") or 0))
            found.pop("fork_errors")
            if found["hops"] < int(report.get("hops") or 0):  # the buffer no longer has them
                found = {k: v for k, v in found.items() if k.startswith("output")}
            report.update(found)
            report.update(status="interrupted", verdict="interrupted", finished_at=time.time(),
                          note=f"{note} {report.get('note') or ''}".strip())
            self.control.store.put_run(report)
            log.warning("run %s was interrupted by the daemon's stop; %d leftover processes "
                        "stopped", report["id"], len(stopped))
            ended.append(report["id"])
        return ended

    # starting

    def _target(self, spec: RunSpec) -> tuple[str, list[str], str]:
        """(routing key, forks `service@sandbox`, readiness note) of the run's target."""
        if bool(spec.sandbox) == bool(spec.routegroup):
            raise Invalid("name either a sandbox or a route group to run against",
                          field="sandbox", errors=[("sandbox", "required (or routegroup)")])
        if spec.sandbox:
            view = self.control.get_sandbox(spec.sandbox)
            forks = [f"{f['service']}@{spec.sandbox}" for f in view["forks"]]
            note = "" if view["status"]["ready"] else \
                f"sandbox {spec.sandbox} was not ready when the run started: " \
                f"{view['status']['message']}"
            return view["routingKey"], forks, note
        assert spec.routegroup is not None
        group = self.control.get_route_group(spec.routegroup)
        forks = []
        for member in group["status"]["sandboxes"]:
            view = self.control.get_sandbox(member)
            forks += [f"{f['service']}@{member}" for f in view["forks"]]
        return group["routingKey"], forks, group["status"]["message"] if group["status"][
            "conflicts"] else ""

    @staticmethod
    def _check(spec: RunSpec) -> None:
        if (isinstance(spec.command, str) and not spec.command.strip()) or not spec.command:
            raise Invalid("command: must name a command to run", field="command",
                          errors=[("command", "must not be empty")])
        if spec.cwd is not None and not Path(spec.cwd).is_dir():
            raise Invalid(f"cwd: {spec.cwd} is not a directory", field="cwd",
                          errors=[("cwd", "no such directory")])

    async def start(self, spec: RunSpec) -> dict[str, Any]:
        key, forks, note = self._target(spec)
        self._check(spec)
        run_id = "r" + secrets.token_hex(4)
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True)
        report = new_report(run_id, spec.sandbox, spec.routegroup, key, spec.command, forks,
                            note, spec.allow_unreached, cwd=spec.cwd,
                            output_path=str(run_dir / "output.log"))
        self.control.store.put_run(report)
        task = asyncio.get_running_loop().create_task(
            self._execute(report, spec, forks, run_dir), name=f"laneway-run-{run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))
        return report

    # executing

    def _fork_logs(self, forks: list[str]) -> dict[str, tuple[Path, int]]:
        out: dict[str, tuple[Path, int]] = {}
        for fork in forks:
            service, _, sandbox = fork.partition("@")
            unit = self.control.unit_of_fork(sandbox, service)
            path = self.control.runtime.log_path(unit) if unit else None
            if path is not None:
                out[fork] = (path, path.stat().st_size if path.exists() else 0)
        return out

    def _environment(self, spec: RunSpec, key: str, proxy: InjectingProxy,
                     run_dir: Path) -> dict[str, str]:
        env = command_environment(spec.env if spec.env is not None else os.environ, key,
                                  run_dir.name, run_dir, proxy.url, spec.sandbox)
        # Marks every process of the command, however far it strays from its process group, so
        # a daemon that restarts after a crash finds and stops what the run left.
        env.update(owner_env(self.state_dir))
        for name, svc in self.control.project.services.items():
            suffix = name.upper().replace("-", "_")
            env[f"LANEWAY_URL_{suffix}"] = f"http://127.0.0.1:{svc.port}"
            env[f"LANEWAY_ADDR_{suffix}"] = f"127.0.0.1:{svc.port}"  # a gRPC target
        return env

    async def _execute(self, report: dict[str, Any], spec: RunSpec, forks: list[str],
                       run_dir: Path) -> None:
        try:
            await self._run_command(report, spec, forks, run_dir)
        except Exception as exc:
            # A run must end with a report even when laneway itself fails during it.
            log.exception("run %s failed inside laneway", report["id"])
            report.update(status="finished", verdict="error", finished_at=time.time(),
                          note=f"laneway failed during this run: {type(exc).__name__}: {exc}; "
                               "the daemon's log has the details")
            self._save(report)

    async def _run_command(self, report: dict[str, Any], spec: RunSpec, forks: list[str],
                           run_dir: Path) -> None:
        run_id = report["id"]
        key = report["routing_key"]
        logs = self._fork_logs(forks)
        proxy = InjectingProxy(key)
        await proxy.start()
        if spec.capture:
            await self.control.capture(key)
        started = time.monotonic()
        argv = ["/bin/sh", "-c", spec.command] if isinstance(spec.command, str) \
            else list(spec.command)
        exit_code: int | None = None

        def progress() -> None:
            report.update(self._collected(report, forks, logs, run_dir,
                                          time.monotonic() - started, proxy.requests))
            self._save(report)

        try:
            with (run_dir / "output.log").open("wb") as out:
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *argv, cwd=spec.cwd, env=self._environment(spec, key, proxy, run_dir),
                        stdin=asyncio.subprocess.DEVNULL, stdout=out,
                        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
                except OSError as exc:
                    report.update(status="finished", verdict="error", note=(
                        f"cannot start {argv[0]!r}: {exc.strerror or exc}; check the command "
                        "and cwd"), finished_at=time.time())
                    self._save(report)
                    return
                self._procs[run_id] = proc
                try:
                    if self._closing:  # close() began while the command was starting
                        self._interrupting.add(run_id)
                        await terminate_group(proc)
                    exit_code = await self._wait(proc, spec.timeout_s, progress)
                except TimeoutError:
                    report["timed_out"] = True
                    exit_code = await terminate_group(proc)
                finally:
                    self._procs.pop(run_id, None)
                    # What left the command's process group (a daemonised helper) goes too.
                    await asyncio.to_thread(self._stop_leftovers, run_id)
        finally:
            await proxy.close()
            if spec.capture:
                self.control.release(key)
        await asyncio.sleep(HOP_SETTLE)
        # Every hop the routers recorded by now is read before the report is made.
        await self.control.runtime.sync_hops()
        report.update(self._findings(report, forks, logs, run_dir, exit_code, spec,
                                     time.monotonic() - started, proxy.requests))
        if spec.diff and run_id not in self._interrupting:
            # After the findings: the replay's keyed requests must not count as the run's.
            self._save(report)
            try:
                report["diff"] = await replay_diff(
                    proxy.recorded, key, unsafe=spec.diff_unsafe,
                    thresholds=thresholds_of(self.control.project.diff))
            except Exception as exc:  # the diff is extra evidence; its failure is reported
                log.exception("run %s: the diff failed", run_id)
                report["diff"] = {"summary": f"the diff failed: {exc}", "findings": []}
        if run_id in self._interrupting:
            self._interrupting.discard(run_id)
            report.update(status="interrupted", verdict="interrupted",
                          note=f"{_SHUTDOWN_NOTE} {report['note']}".strip())
        self._save(report)

    async def _wait(self, proc: asyncio.subprocess.Process, timeout: float | None,
                    progress: Callable[[], None]) -> int:
        """The command's exit code, calling `progress` every `progress_every` seconds while it
        runs; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = self.progress_every
            if deadline is not None:
                step = min(step, deadline - time.monotonic())
                if step <= 0:
                    raise TimeoutError
            try:
                return await asyncio.wait_for(proc.wait(), step)
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            progress()

    def _stop_leftovers(self, run_id: str) -> list[int]:
        """Stop every process still marked with the run's id; returns their pids."""
        stopped = stop_processes(find_marked(self.state_dir, {RUN_ID_ENV: run_id}))
        if stopped:
            log.info("run %s: stopped %d processes its command left running", run_id,
                     len(stopped))
        return stopped

    def _save(self, report: dict[str, Any]) -> None:
        """Store the report; a store that refuses (disk full) costs this save, not the run."""
        try:
            self.control.store.put_run(report)
        except StoreUnavailable as exc:
            if report["id"] not in self._unsaved:
                log.warning("run %s: cannot save its report: %s", report["id"], exc)
            self._unsaved.add(report["id"])
        else:
            self._unsaved.discard(report["id"])

    def _collected(self, report: dict[str, Any], forks: list[str],
                   logs: dict[str, tuple[Path, int]], run_dir: Path, duration: float,
                   proxied: int) -> dict[str, Any]:
        """What the run has gathered so far: saved while it runs, and part of its end report."""
        hops = self.control.hops.query(since=report["started_at"] - 0.01, limit=10_000_000)
        output = run_dir / "output.log"
        return {
            "duration_s": round(duration, 3),
            **hop_findings(hops, report["routing_key"], forks),
            "proxied_requests": proxied,
            "fork_errors": self._fork_errors(logs),
            "output_bytes": output.stat().st_size if output.exists() else 0,
            "output_tail": [ln[:400] for ln in _tail_lines(output, OUTPUT_TAIL)],
        }

    def _findings(self, report: dict[str, Any], forks: list[str],
                  logs: dict[str, tuple[Path, int]], run_dir: Path, exit_code: int | None,
                  spec: RunSpec, duration: float, proxied: int) -> dict[str, Any]:
        found = self._collected(report, forks, logs, run_dir, duration, proxied)
        reached = found["forks_reached"]
        junit = run_dir / "junit.xml"
        tests, failures = failed_tests(
            junit.read_text("utf-8", "replace") if junit.exists() else None,
            (run_dir / "output.log").read_text("utf-8", "replace").splitlines())
        verdict = verdict_of(exit_code, reached, allow_unreached=spec.allow_unreached)
        note = report["note"]
        if report["timed_out"]:
            note = f"timed out after {spec.timeout_s:g}s; the command was stopped. " + note
        if verdict == "vacuous":
            missing = ", ".join(f for f, n in reached.items() if not n)
            note = f"the command passed but never reached {missing}: " \
                f"{unreached_reason(found)}. " + note
        return {
            **found, "status": "finished", "verdict": verdict, "exit_code": exit_code,
            "finished_at": time.time(), "failures": failures, "tests": tests,
            "note": note.strip(),
        }

    def _fork_errors(self, logs: dict[str, tuple[Path, int]]) -> list[str]:
        lines: list[str] = []
        for fork, (path, offset) in logs.items():
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    text = fh.read(4 * 1024 * 1024).decode("utf-8", "replace")
            except OSError:
                continue
            lines += [f"[{fork}] {ln[:400]}" for ln in text.splitlines() if is_error_line(ln)]
        return lines[-FORK_ERRORS:]

    # reading

    def get(self, run_id: str) -> dict[str, Any]:
        report = self.control.store.get_run(run_id)
        if report is None:
            raise NotFound(f"run {run_id!r} not found; `laneway runs list` shows the runs")
        return report

    async def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        task = self._tasks.get(run_id)
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout)
        return self.get(run_id)

    def output(self, run_id: str, offset: int) -> tuple[bytes, int]:
        path = Path(self.get(run_id)["output_path"])
        if not path.exists():
            return b"", offset
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(1024 * 1024)
        return data, offset + len(data)

    async def cancel(self, run_id: str) -> dict[str, Any]:
        self.get(run_id)
        proc = self._procs.get(run_id)
        if proc is not None:
            await terminate_group(proc)
        return await self.wait(run_id, 10)

    async def close(self) -> None:
        """Stop every command still running (its run ends `interrupted`, with its findings)
        and wait until every report is saved."""
        self._closing = True
        running = {run_id: proc for run_id, proc in self._procs.items()
                   if proc.returncode is None}
        self._interrupting.update(running)
        await asyncio.gather(*(terminate_group(proc) for proc in running.values()))
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def _tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a file, reading no more than its last `OUTPUT_TAIL_BYTES`."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - OUTPUT_TAIL_BYTES))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    if size > OUTPUT_TAIL_BYTES and lines:
        lines = lines[1:]  # cut by the window
    return lines[-count:]


