"""Running an experiment (`laneway experiment run`, MCP `run_experiment`): the tests of every
sandbox as runs, then the load step against the baseline and every sandbox at once, then each
sandbox's verdict.

The client orchestrates (as it runs a cluster's test commands, `client/runner.py`): the control
plane runs each test command (`POST /v1/runs`, in parallel unless the file says not to) and
keeps the experiment's report, which this module POSTs at the start, PUTs every
`REPORT_EVERY` seconds with its progress and once at the end (a report left `running` for a
minute reads `interrupted`). The load step runs here, on this machine's loopback, through the
same routers as every other request (`client/loadgen.py`); the tests come first and the load
after them, so that neither disturbs the other's figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from laneway.client.api import AsyncApiClient, CliError
from laneway.client.loadgen import LoadError, LoadRequest, calibrate, check_target, run_load
from laneway.core.experiment_report import conclude
from laneway.core.experiments import ExperimentSpec, interpolate_request
from laneway.core.loadmath import Budget, baseline_spread, evaluate_budget, summarize
from laneway.core.spec import SpecError

__all__ = ["BASELINE", "ExperimentError", "run_experiment"]

BASELINE = "baseline"  # the baseline's lane and row
REPORT_EVERY = 10.0
WARMUP_S = 0.5  # per lane, before the measured slices
RUN_POLL_S = 30.0
INTERRUPTED_SAVE_S = 5.0  # how long Ctrl-C waits for the control plane to take the report
Progress = Callable[[str], None]


class ExperimentError(Exception):
    """The experiment cannot start (an unknown sandbox, a target that is not ours): what to
    fix, for the user."""


async def _targets(api: AsyncApiClient, spec: ExperimentSpec) -> list[dict[str, Any]]:
    out = []
    for kind, name in spec.targets:
        path = f"/v1/sandboxes/{name}" if kind == "sandbox" else f"/v1/routegroups/{name}"
        try:
            view = await api.get(path)
        except CliError as exc:
            if exc.status == 404:
                listing = "laneway status" if kind == "sandbox" else "laneway routegroup list"
                raise ExperimentError(f"{kind}s: no {kind} {name!r} in this environment "
                                      f"(`{listing}` shows them; apply it first)") from exc
            raise
        out.append({"target": name, "kind": kind, "routing_key": view["routingKey"]})
    return out


async def _load_request(api: AsyncApiClient, spec: ExperimentSpec) -> LoadRequest | None:
    load = spec.load
    if load is None:
        return None
    services = {s["name"]: s["url"] for s in await api.get("/v1/services")}
    try:
        url = interpolate_request(load.url, services)
    except SpecError as exc:
        raise ExperimentError(exc.render()) from exc
    own = {urlsplit(u).hostname or "" for u in services.values()} | \
        {urlsplit(api.url).hostname or ""}
    try:
        check_target(url, own)
    except LoadError as exc:
        raise ExperimentError(str(exc)) from exc
    body = load.body.encode() if load.body is not None else None
    return LoadRequest(load.method, url, tuple(load.headers.items()), body)


def _tests_summary(run: Mapping[str, Any]) -> dict[str, Any]:
    reached = run.get("forks_reached") or {}
    out: dict[str, Any] = {
        "verdict": run["verdict"], "run_id": run["id"], "exit_code": run.get("exit_code"),
        "duration_s": run.get("duration_s"), "totals": run.get("tests"),
        "failures": [{"name": f["name"], "message": str(f.get("message", ""))[:200]}
                     for f in (run.get("failures") or [])[:10]],
        "unreached": [fork for fork, n in reached.items() if not n],
    }
    if run.get("note"):
        out["note"] = str(run["note"])[:400]
    return out


def _diff_summary(run: Mapping[str, Any]) -> dict[str, Any] | None:
    diff = run.get("diff")
    if not diff:
        return None
    return {"summary": diff.get("summary", ""), "red": int(diff.get("red") or 0),
            "yellow": int(diff.get("yellow") or 0),
            "findings": [{k: f.get(k) for k in ("risk", "endpoint", "path", "kind")}
                         for f in (diff.get("findings") or [])[:10]]}


def _test_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The tests' environment: the caller's, with this Python environment's `bin/` first on
    `PATH` (as laneway runs services), so `python -m pytest` in an experiment file is the
    Python laneway is installed in, activated or not."""
    out = dict(env if env is not None else os.environ)
    here = str(Path(sys.executable).parent)
    path = out.get("PATH", "")
    if here not in path.split(os.pathsep):
        out["PATH"] = here + (os.pathsep + path if path else "")
    return out


class _Experiment:
    """One experiment as it runs: its report, kept up to date and sent to the control
    plane."""

    def __init__(self, api: AsyncApiClient, spec: ExperimentSpec, targets: list[dict[str, Any]],
                 request: LoadRequest | None, progress: Progress, file: str | None) -> None:
        self.api, self.spec, self.request, self.progress = api, spec, request, progress
        budget = spec.load.budget if spec.load else Budget()
        self.report: dict[str, Any] = {
            "name": spec.name, "file": file, "status": "running", "verdict": "running",
            "started_at": time.time(), "finished_at": None, "phase": "starting",
            "progress": "starting", "spec": spec.model_dump(mode="json"),
            "rows": ([{"target": BASELINE, "kind": "baseline", "routing_key": None}]
                     if spec.load else []) + [dict(t) for t in targets],
            "load": None if spec.load is None or request is None else {
                "request": f"{request.method} {request.url}", "rate": spec.load.rate,
                "duration_s": spec.load.duration, "slice_s": spec.load.slice,
                "rounds": spec.load.rounds,
                "budget": {"quantile": budget.name, "ratio": budget.ratio,
                           "errors": budget.errors, "noise_floor_ms": budget.noise_floor_ms},
                "slices": [], "overhead": None},
        }
        self.runs: list[str] = []  # ids of the runs this experiment started

    def say(self, phase: str, text: str) -> None:
        self.report.update(phase=phase, progress=text)
        self.progress(text)

    async def save(self) -> None:
        self.report["duration_s"] = round(time.time() - self.report["started_at"], 3)
        if "id" not in self.report:
            try:
                answer = await self.api.request("POST", "/v1/experiments", json=self.report)
            except CliError as exc:
                if exc.status in (404, 405):
                    raise ExperimentError(
                        "this control plane keeps no experiments (a cluster's operator does "
                        "not yet): run the experiment against a local environment") from exc
                raise
            self.report["id"] = answer["id"]
        else:
            await self.api.request("PUT", f"/v1/experiments/{self.report['id']}",
                                   json=self.report)

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            with contextlib.suppress(CliError):  # progress is best effort; the end is not
                await self.save()

    # tests

    async def run_tests(self, cwd: str, env: Mapping[str, str] | None) -> None:
        spec = self.spec
        assert spec.tests is not None
        targets = [r for r in self.report["rows"] if r["kind"] != "baseline"]
        state: dict[str, str] = {r["target"]: "waiting" for r in targets}

        def show() -> None:
            self.say("tests", "tests: " + ", ".join(f"{t} {s}" for t, s in state.items()))

        async def one(row: dict[str, Any]) -> None:
            target = row["target"]
            body = {"sandbox": target if row["kind"] == "sandbox" else None,
                    "routegroup": target if row["kind"] == "routegroup" else None,
                    "command": spec.tests, "cwd": cwd, "env": _test_env(env),
                    "timeout_s": spec.tests_timeout, "diff": spec.diff}
            run = await self.api.request("POST", "/v1/runs", json=body)
            self.runs.append(run["id"])
            state[target] = f"running ({run['id']})"
            show()
            if run.get("executor") == "client":  # a cluster's operator runs no commands
                from laneway.client.runner import execute
                result = await execute(run, spec.tests or [], cwd=cwd, env=env,
                                       timeout_s=spec.tests_timeout)
                run = await self.api.request("POST", f"/v1/runs/{run['id']}/result",
                                             json=result)
            while run["status"] == "running":
                run = await self.api.get(f"/v1/runs/{run['id']}", wait=RUN_POLL_S)
            row["tests"] = _tests_summary(run)
            if spec.diff:
                row["diff"] = _diff_summary(run)
            state[target] = f"{run['verdict']} ({run['id']})"
            show()

        show()
        if spec.parallel:
            await asyncio.gather(*(one(r) for r in targets))
        else:
            for row in targets:
                await one(row)

    async def cancel_runs(self) -> None:
        for run_id in self.runs:
            with contextlib.suppress(CliError):
                await self.api.request("POST", f"/v1/runs/{run_id}/cancel")

    # load

    async def run_load(self) -> None:
        load, request = self.spec.load, self.request
        assert load is not None
        assert request is not None
        rows = self.report["rows"]
        lanes = {r["target"]: r["routing_key"] for r in rows}
        warning = load.few_requests()
        if warning:
            self.report["load"]["warning"] = warning
            self.say("load", f"load: warning: {warning}")
        self.say("load", "load: measuring the generator's own overhead")
        floor = await calibrate(load.rate)
        total = load.rounds * len(lanes)

        def on_slice(done: int, of: int) -> None:
            self.say("load", f"load: slice {done}/{of} (round {(done - 1) // len(lanes) + 1}"
                     f"/{load.rounds}), {load.rate:g}/s per lane")

        # Unmeasured first requests, to every lane: a fork just started (and the routers'
        # first connections to it) must not be measured against a warm baseline.
        self.say("load", f"load: warming up, {WARMUP_S:g}s per lane")
        with contextlib.suppress(LoadError):  # the measured step then says what is wrong
            await run_load(request, lanes, rate=min(load.rate, 20.0), rounds=1,
                           slice_s=WARMUP_S, timeout_s=load.timeout,
                           max_connections=load.max_connections)
        self.say("load", f"load: {total} slices of {load.slice:g}s, {len(lanes)} lanes")
        try:
            result = await run_load(request, lanes, rate=load.rate, rounds=load.rounds,
                                    slice_s=load.slice, timeout_s=load.timeout,
                                    max_connections=load.max_connections, progress=on_slice)
        except LoadError as exc:
            for row in rows:
                row["load_error"] = str(exc)
            return
        budget = load.budget
        base_rounds = result.lane_rounds(BASELINE)
        spread = baseline_spread(base_rounds, budget.quantile)
        for row in rows:
            lane_rounds = result.lane_rounds(row["target"])
            errors = result.lane_errors(row["target"])
            figures = summarize([v for r in lane_rounds for v in r], errors)
            row["load"] = {**figures.to_json(), "statuses": result.lane_statuses(row["target"])}
            if row["kind"] == "baseline":
                row["load"]["spread_ms"] = round(spread, 2)
                continue
            outcome = evaluate_budget(base_rounds, lane_rounds, errors, budget)
            row["load"]["ratio"] = None if outcome.ratio is None else round(outcome.ratio, 3)
            row["budget"] = outcome.to_json()
        self.report["load"].update(
            slices=[s.to_json() for s in result.slices],
            overhead={**result.overhead(), **floor}, measured_s=result.duration_s,
            warmup_s=WARMUP_S)


async def run_experiment(api: AsyncApiClient, spec: ExperimentSpec, *, cwd: str,
                         env: Mapping[str, str] | None = None, file: str | None = None,
                         progress: Progress | None = None,
                         started: Callable[[dict[str, Any]], None] | None = None) -> dict[
                             str, Any]:
    """Run `spec` and return its final report (also kept by the control plane). `started`
    gets the report once it has its id. Cancelled (Ctrl-C), its runs are cancelled, the
    report ends `interrupted` and the cancellation goes on."""
    request = await _load_request(api, spec)
    targets = await _targets(api, spec)
    run = _Experiment(api, spec, targets, request, progress or (lambda _: None), file)
    await run.save()
    if started is not None:
        started(run.report)
    beat = asyncio.get_running_loop().create_task(run.heartbeat(),
                                                  name=f"laneway-experiment-{run.report['id']}")
    try:
        if spec.tests is not None:
            await run.run_tests(cwd, env)
        if spec.load is not None:
            await run.run_load()
        conclude(run.report)
        run.report.update(status="finished", phase="done", finished_at=time.time(),
                          progress="done")
    except asyncio.CancelledError:
        run.report.update(status="interrupted", verdict="interrupted", phase="interrupted",
                          finished_at=time.time(), note="stopped before it finished "
                          "(Ctrl-C); the report keeps what it had")
        # Bounded: Ctrl-C ends the command within seconds even when the control plane does
        # not answer (the report then reads `interrupted` a minute later all the same).
        with contextlib.suppress(CliError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.cancel_runs()), INTERRUPTED_SAVE_S)
        with contextlib.suppress(CliError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.save()), INTERRUPTED_SAVE_S)
        raise
    except Exception as exc:
        run.report.update(status="finished", verdict="error", phase="error",
                          finished_at=time.time(), note=f"the experiment failed: {exc}")
        with contextlib.suppress(CliError):
            await run.save()
        raise
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
    await run.save()
    return run.report
