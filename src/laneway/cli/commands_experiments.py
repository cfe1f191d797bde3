"""`laneway experiment run/list/get`: several sandboxes compared in one command, one verdict
each (tests, latency and errors under load against the baseline, diff).

The CLI runs the experiment itself (`client/experiments.py`: the runs go to the control plane,
the load step runs here) and the control plane keeps its report.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from laneway.cli.output import console, err_console, print_json, since, table
from laneway.client import AsyncApiClient, CliError, connect, resolve
from laneway.core.experiment_report import cells, render_markdown

__all__ = ["experiment_app"]

ApiOption = Annotated[str | None, typer.Option("--api", help="Control plane URL (token from "
                                               "LANEWAY_TOKEN); default: find .laneway/")]
FormatOption = Annotated[str, typer.Option("-o", "--output", help="table, json or md")]
experiment_app = typer.Typer(help="Compare sandboxes: their tests, their latency and errors "
                             "under load against the baseline, their diff; one verdict each.",
                             no_args_is_help=True)

# As `laneway run`'s: 0 every sandbox passed, 1 one failed, 2 the experiment could not run
# (a bad file, an unknown sandbox, laneway failing), 4 interrupted; Ctrl-C: 130.
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 4
_HEADERS = ("TARGET", "TESTS", "REQUESTS", "ERRORS", "P50", "P95", "P99", "RATIO", "BUDGET",
            "DIFF", "VERDICT")
_COLOURS = {"passed": "green", "failed": "red", "error": "red", "interrupted": "yellow",
            "running": "yellow", "reference": "cyan"}


def _check_format(output: str) -> None:
    if output not in ("table", "json", "md"):
        raise CliError(f"-o {output}: choose table, json or md", code=EXIT_ERROR)


def exit_code(report: dict[str, Any]) -> int:
    return {"passed": 0, "failed": EXIT_FAILED, "interrupted": EXIT_INTERRUPTED}.get(
        str(report.get("verdict")), EXIT_ERROR)


def print_experiment(report: dict[str, Any], output: str) -> None:
    if output == "json":
        print_json(report)
        return
    if output == "md":
        sys.stdout.write(render_markdown(report))
        return
    verdict = str(report.get("verdict"))
    colour = _COLOURS.get(verdict, "red")
    console.print(f"\n[bold]experiment {report.get('name')}[/bold] ({report['id']}): "
                  f"[{colour}]{verdict}[/{colour}]  {float(report.get('duration_s') or 0):.1f}s")
    load = report.get("load")
    if load:
        console.print(f"load: {load['request']} at {load['rate']:g}/s per lane, "
                      f"{load['duration_s']:g}s each, {load['slice_s']:g}s slices interleaved "
                      f"({load['rounds']} rounds)", markup=False)
        if load.get("warning"):
            console.print(f"warning: {load['warning']}", style="yellow", markup=False)
    rows = table(*_HEADERS)
    for row in report["rows"]:
        shown = cells(row)
        style = _COLOURS.get(shown[-1], "white")
        rows.add_row(*shown[:-1], f"[{style}]{shown[-1]}[/{style}]")
    console.print(rows)
    for row in report["rows"]:
        if row.get("sentence"):
            console.print(f"- {row['sentence']}", markup=False)
    over = (load or {}).get("overhead")
    if over:
        console.print(f"generator overhead: sent {over.get('send_lag_p50_ms')} ms late at the "
                      f"median ({over.get('send_lag_p99_ms')} ms p99); a trivial local server "
                      f"answers it in {over.get('trivial_server_p50_ms')} ms p50", markup=False)
    if report.get("note"):
        console.print(f"note: {report['note']}", markup=False)
    console.print(f"report: laneway experiment get {report['id']} -o md")


class _Progress:
    """Progress on stderr while it runs (stdout may carry the report as JSON): on a terminal
    one line rewritten in place; piped, a line per change of phase and per round."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K" + text[:200])
            sys.stderr.flush()
            return
        key = re.sub(r"slice \d+/\d+ ", "", text)  # piped: a line per round, not per slice
        if key != self.last:
            self.last = key
            err_console.print(text, markup=False)

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


@experiment_app.command("run")
def experiment_run(
    file: Annotated[Path, typer.Option("-f", "--file", help="The experiment file")] =
    Path("experiment.yaml"),
    output: FormatOption = "table",
    api: ApiOption = None,
) -> None:
    """Run an experiment: each sandbox's tests (one `laneway run` each, in the file's folder
    or its `cwd`), then the load step (the baseline and every sandbox in interleaved 1 s
    slices), then one verdict per sandbox.
    Exit code: 0 every sandbox passed, 1 one failed, 2 the experiment could not run, 4
    interrupted."""
    from laneway.client.experiments import ExperimentError, run_experiment
    from laneway.core.experiments import read_experiment
    from laneway.core.spec import SpecError

    _check_format(output)
    try:
        text = file.read_text()
    except OSError as exc:
        raise CliError(f"{file}: cannot read the file: {exc.strerror}",
                       code=EXIT_ERROR) from exc
    try:
        spec = read_experiment(text, str(file))
    except SpecError as exc:
        raise CliError(exc.render(), code=EXIT_ERROR) from exc
    tests_cwd = file.resolve().parent / (spec.cwd or ".")
    if spec.tests is not None and not tests_cwd.is_dir():
        raise CliError(f"{file}: cwd: {tests_cwd} is not a directory", code=EXIT_ERROR)
    target = resolve(api)
    progress = _Progress()

    def started(report: dict[str, Any]) -> None:
        err_console.print(f"experiment {spec.name} ({report['id']}): "
                          f"{len(report['rows'])} rows; `laneway experiment get "
                          f"{report['id']}` shows it from anywhere", markup=False)

    async def main() -> dict[str, Any]:
        client = AsyncApiClient(target.url, target.token, target.headers, target.context)
        try:
            return await run_experiment(client, spec, cwd=str(tests_cwd),
                                        file=str(file), progress=progress, started=started)
        finally:
            await client.aclose()

    try:
        report = asyncio.run(main())
    except ExperimentError as exc:
        raise CliError(str(exc), code=EXIT_ERROR) from exc
    finally:
        progress.end()
    print_experiment(report, output)
    raise typer.Exit(exit_code(report))


@experiment_app.command("list")
def experiment_list(limit: int = 20, output: FormatOption = "table",
                    api: ApiOption = None) -> None:
    """List recent experiments, newest first."""
    data = connect(api).get("/v1/experiments", limit=limit)
    if output == "json":
        print_json(data)
        return
    if not data:
        console.print("no experiments: `laneway experiment run -f experiment.yaml`")
        return
    rows = table("ID", "NAME", "VERDICT", "STARTED", "SECONDS", "SANDBOXES")
    for report in data:
        targets = ", ".join(f"{r['target']}: {r.get('verdict', '-')}" for r in report["rows"]
                            if r.get("kind") != "baseline")
        rows.add_row(report["id"], report["name"], report["verdict"],
                     since(report.get("started_at")),
                     f"{float(report.get('duration_s') or 0):.1f}", targets)
    console.print(rows)


@experiment_app.command("get")
def experiment_get(experiment_id: str, output: FormatOption = "table",
                   api: ApiOption = None) -> None:
    """Show one experiment's report (-o md for a pull request, -o json with the per-slice
    figures)."""
    _check_format(output)
    report = connect(api).get(f"/v1/experiments/{experiment_id}")
    print_experiment(report, output)
    if report.get("status") == "running":
        err_console.print(f"still running (updated {since(report.get('updated_at'))}; "
                          f"{report.get('progress')})", markup=False)
