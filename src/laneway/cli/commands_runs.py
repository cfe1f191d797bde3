"""`laneway run`, `runs`, `request`, `trace` and `leaks`: the verification loop on the CLI."""

from __future__ import annotations

import os
import secrets
import sys
import time
from typing import Annotated, Any

import httpx
import typer

from laneway.cli.output import console, print_json, table
from laneway.client import ApiClient, CliError, connect
from laneway.core.baggage import headers_with_key
from laneway.core.hops import key_conflict_note, status_text
from laneway.core.runs import leak_sentence, render_markdown

__all__ = ["register"]

ApiOption = Annotated[str | None, typer.Option("--api", help="Control plane URL (token from "
                                               "LANEWAY_TOKEN); default: find .laneway/")]
FormatOption = Annotated[str, typer.Option("-o", "--output", help="table, json or md")]
runs_app = typer.Typer(help="Past runs and their reports.", no_args_is_help=True)

# Exit codes of `laneway run`, so CI can tell a vacuous pass from a failure.
EXIT_VACUOUS = 3
EXIT_ERROR = 2
EXIT_INTERRUPTED = 4  # the daemon stopped before the command finished: no verdict


def path_of(hops: list[dict[str, Any]]) -> str:
    """`web → pricing@sb-a → currency`, in the order the hops started."""
    return " → ".join(h["service"] if h["destination"] == "baseline"
                      else f"{h['service']}@{h['destination']}"
                      for h in sorted(hops, key=lambda h: h["at"]))


def print_hops(hops: list[dict[str, Any]]) -> None:
    rows = table("SERVICE", "SERVED BY", "KEY", "STATUS", "MS", "REQUEST")
    for hop in sorted(hops, key=lambda h: h["at"]):
        served = "baseline" if hop["destination"] == "baseline" else \
            f"{hop['service']}@{hop['destination']}"
        rows.add_row(hop["service"], served, (hop["routing_key"] or "-") + conflict_mark(hop),
                     status_text(hop["status"], hop.get("grpc_status")),
                     f"{hop['duration_ms']:.1f}",
                     f"{hop['method']} {hop['path']}")
    console.print(rows)
    print_conflicts(hops)


def conflict_mark(hop: dict[str, Any]) -> str:
    """` *` after a hop whose baggage carried two different keys (older records lack it)."""
    return " *" if hop.get("key_conflict") else ""


def print_conflicts(hops: list[dict[str, Any]]) -> None:
    count = sum(1 for hop in hops if hop.get("key_conflict"))
    if count:
        console.print(f"* {key_conflict_note(count)}", markup=False)


def _check_format(output: str) -> None:
    if output not in ("table", "json", "md"):
        raise CliError(f"-o {output}: choose table, json or md")


def print_report(report: dict[str, Any], output: str) -> None:
    if output == "json":
        print_json(report)
        return
    if output == "md":
        sys.stdout.write(render_markdown(report))
        return
    colour = {"passed": "green", "vacuous": "yellow", "interrupted": "yellow"}.get(
        report["verdict"], "red")
    target = report["sandbox"] or f"route group {report['routegroup']}"
    exit_code = "-" if report["exit_code"] is None else report["exit_code"]
    console.print(f"\n[bold]run {report['id']}[/bold]: [{colour}]{report['verdict']}[/{colour}]"
                  f"  exit {exit_code}  {report['duration_s']:.1f}s  "
                  f"against {target} (key {report['routing_key']}), {report['hops']} hops")
    reached = ", ".join(f"{fork}: {n}" for fork, n in report["forks_reached"].items())
    console.print(f"forks reached: {reached or 'no forks'}")
    for failure in report["failures"][:10]:
        console.print(f"[red]failed[/red] {failure['name']}: {failure['message']}")
    for leak in report["leaks"][:10]:
        console.print(f"[yellow]leak[/yellow]: {leak_sentence(leak)}", highlight=False)
    if report["fork_errors"]:
        console.print("errors logged by the forks during the run:")
        for line in report["fork_errors"][-10:]:
            console.print(f"  {line}", markup=False)
    if report.get("diff"):
        print_diff(report["diff"])
    if report.get("captured"):
        console.print(f"captured {report['captured']} exchanges: laneway captures --run "
                      f"{report['id']}; laneway diff --sandbox {report['sandbox'] or '…'} "
                      f"--capture {report['id']}", markup=False)
    if report.get("note"):
        console.print(f"note: {report['note']}", markup=False)
    if report.get("key_conflicts"):
        console.print(f"note: {key_conflict_note(int(report['key_conflicts']))}", markup=False)
    console.print(f"report: laneway runs get {report['id']} -o md")


def print_diff(diff: dict[str, Any]) -> None:
    """The diff against the baseline: red and yellow findings, one line each."""
    console.print(f"diff: {diff['summary']}", markup=False)
    colour = {"red": "red", "yellow": "yellow"}
    for finding in diff.get("findings", [])[:20]:
        risk = finding["risk"]
        console.print(f"  [{colour[risk]}]{risk:<6}[/{colour[risk]}] {finding['endpoint']}  "
                      f"{finding['path']} ({finding['kind']}): baseline "
                      f"{finding['baseline']!r}, sandbox {finding['sandbox']!r}  "
                      f"[{finding['raw']}/{finding['samples']} requests, noise "
                      f"{finding['noise']}]", highlight=False)
    for reason, count in diff.get("skipped", {}).items():
        console.print(f"  not replayed: {count} x {reason}", markup=False)
    if diff.get("note"):
        console.print(f"  note: {diff['note']}", markup=False)


def _exit_code(report: dict[str, Any]) -> int:
    verdict = report["verdict"]
    if verdict == "passed":
        return 0
    if verdict == "vacuous":
        return EXIT_VACUOUS
    if verdict == "error":
        return EXIT_ERROR
    if verdict == "interrupted":
        return EXIT_INTERRUPTED
    code = report["exit_code"]
    return code if isinstance(code, int) and 0 < code < 256 else 1


def _follow_output(client: ApiClient, run_id: str, stream: Any) -> None:
    offset = 0
    while True:
        resp = client.raw("GET", f"/v1/runs/{run_id}/output", params={"offset": offset})
        if resp.content:
            stream.write(resp.content.decode("utf-8", "replace"))
            stream.flush()
        offset = int(resp.headers["x-laneway-next-offset"])
        if resp.headers["x-laneway-run-status"] != "running" and not resp.content:
            return
        if not resp.content:
            time.sleep(0.2)


def run(
    command: Annotated[list[str], typer.Argument(help="The test command, after --")],
    sandbox: Annotated[str | None, typer.Option(help="Run against this sandbox")] = None,
    routegroup: Annotated[str | None, typer.Option(help="...or this route group")] = None,
    allow_unreached: Annotated[bool, typer.Option(
        "--allow-unreached", help="Pass even if a fork was never reached")] = False,
    diff: Annotated[bool, typer.Option(
        "--diff", help="Replay the run's requests against the baseline and diff the answers")]
    = False,
    diff_unsafe: Annotated[bool, typer.Option(
        "--diff-unsafe", help="With --diff: replay POST, PUT, DELETE too (they write to the "
        "shared baseline's data again)")] = False,
    capture: Annotated[bool, typer.Option(
        "--capture", help="Capture the run's requests at every service (laneway captures "
        "--run ID; laneway diff --capture ID)")] = False,
    timeout: Annotated[float | None, typer.Option(help="Stop the command after N seconds")] =
    None,
    output: FormatOption = "table",
    api: ApiOption = None,
) -> None:
    """Run a test command against a sandbox and report what it proved.

    The command gets LANEWAY_ROUTING_KEY, LANEWAY_BAGGAGE, LANEWAY_URL_<SERVICE>,
    LANEWAY_ADDR_<SERVICE> (host:port, for gRPC clients) and an HTTP_PROXY that adds the key to
    plain-HTTP requests. Exit code: 0 passed, 3 vacuous (the
    command passed but a fork was never reached), 4 interrupted (the daemon stopped before the
    command finished), otherwise the command's own failure code.
    """
    _check_format(output)
    client = connect(api)
    here = client.context is not None  # a cluster's operator runs no commands: we do
    report = client.request("POST", "/v1/runs", json={
        "sandbox": sandbox, "routegroup": routegroup, "command": command,
        "cwd": None if here else os.getcwd(), "env": None if here else dict(os.environ),
        "timeout_s": timeout, "allow_unreached": allow_unreached, "diff": diff or diff_unsafe,
        "diff_unsafe": diff_unsafe, "capture": capture})
    if report.get("executor") == "client":
        report = _run_here(client, report, command, timeout,
                           sys.stdout if output == "table" else sys.stderr)
        print_report(report, output)
        raise typer.Exit(_exit_code(report))
    try:
        # The command's own output goes to stderr when stdout carries a machine-readable report.
        _follow_output(client, report["id"], sys.stdout if output == "table" else sys.stderr)
        while report["status"] == "running":
            report = client.get(f"/v1/runs/{report['id']}", wait=30)
    except CliError as exc:
        if "cannot reach the control plane" not in exc.message:
            raise
        # The daemon went away under the run: its report survives it.
        raise CliError(f"the daemon stopped while run {report['id']} was running; after "
                       f"`laneway up`, `laneway runs get {report['id']}` shows what it "
                       "collected (it ends `interrupted`)", code=EXIT_INTERRUPTED) from exc
    except KeyboardInterrupt:
        # Ctrl-C stops the command too, not just our view of it.
        client.request("POST", f"/v1/runs/{report['id']}/cancel")
        raise
    print_report(report, output)
    raise typer.Exit(_exit_code(report))


def _run_here(client: ApiClient, report: dict[str, Any], command: list[str],
              timeout: float | None, stream: Any) -> dict[str, Any]:
    """Run the command on this machine for a control plane that runs none (a cluster's
    operator), then post its outcome, from which the operator makes the report."""
    import asyncio

    from laneway.client.runner import execute, interrupted_result

    started = time.monotonic()
    # Progress goes to stderr: stdout may carry the report as JSON.
    print(f"run {report['id']} against {report['sandbox'] or report['routegroup']} (key "
          f"{report['routing_key']}): the command runs here", file=sys.stderr, flush=True)
    try:
        result = asyncio.run(execute(report, command, timeout_s=timeout,
                                     stream=stream.buffer))
    except KeyboardInterrupt:
        result = interrupted_result(time.monotonic() - started)
        client.request("POST", f"/v1/runs/{report['id']}/result", json=result)
        raise
    answer: dict[str, Any] = client.request("POST", f"/v1/runs/{report['id']}/result",
                                            json=result)
    return answer


@runs_app.command("list")
def runs_list(sandbox: Annotated[str | None, typer.Option(help="Only this sandbox's runs")] =
              None, limit: int = 20, output: FormatOption = "table",
              api: ApiOption = None) -> None:
    """List recent runs, newest first."""
    data = connect(api).get("/v1/runs", sandbox=sandbox, limit=limit)
    if output == "json":
        print_json(data)
        return
    if not data:
        console.print("no runs")
        return
    rows = table("ID", "TARGET", "VERDICT", "EXIT", "SECONDS", "FORKS REACHED", "COMMAND")
    for r in data:
        rows.add_row(r["id"], r["sandbox"] or r["routegroup"], r["verdict"],
                     "-" if r["exit_code"] is None else str(r["exit_code"]),
                     f"{r['duration_s']:.1f}",
                     ", ".join(f"{f}: {n}" for f, n in r["forks_reached"].items()),
                     r["command_line"][:60])
    console.print(rows)


@runs_app.command("get")
def runs_get(run_id: str, output: FormatOption = "table", api: ApiOption = None) -> None:
    """Show one run's report (-o md for a pull request, -o json for tools)."""
    _check_format(output)
    print_report(connect(api).get(f"/v1/runs/{run_id}"), output)


def request(
    method: Annotated[str, typer.Argument(help="GET, POST, …")],
    url: Annotated[str, typer.Argument(help="A service's public URL (see `laneway status`)")],
    sandbox: Annotated[str | None, typer.Option(help="Send it with this sandbox's key")] = None,
    routegroup: Annotated[str | None, typer.Option(help="...or this route group's")] = None,
    data: Annotated[str | None, typer.Option("-d", "--data", help="Request body")] = None,
    header: Annotated[list[str] | None, typer.Option("-H", "--header",
                                                     help="'Name: value', repeatable")] = None,
    output: FormatOption = "table",
    api: ApiOption = None,
) -> None:
    """Send one request (with the key) and print the answer and the path it took."""
    client = connect(api)
    result = send_request(client, method, url, sandbox=sandbox, routegroup=routegroup,
                          body=data, headers=header or [])
    if output == "json":
        print_json(result)
        return
    console.print(f"{result['status']} {result['headers'].get('laneway-served-by', '')}")
    sys.stdout.write(result["body"] + ("\n" if not result["body"].endswith("\n") else ""))
    console.print(f"\ntrace {result['trace_id']}: {path_of(result['hops']) or 'no hops'}")
    if result["hops"]:
        print_hops(result["hops"])


def send_request(client: ApiClient, method: str, url: str, *, sandbox: str | None,
                 routegroup: str | None, body: str | None,
                 headers: list[str]) -> dict[str, Any]:
    """One request through the system with a fresh trace id; its answer and recorded hops."""
    sent: dict[str, str] = {}
    for item in headers:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise CliError(f"-H {item!r}: use 'Name: value'")
        sent[name.strip()] = value.strip()
    key = None
    if sandbox:
        key = client.get(f"/v1/sandboxes/{sandbox}")["routingKey"]
    elif routegroup:
        key = client.get(f"/v1/routegroups/{routegroup}")["routingKey"]
    if key:
        # Replaced if the caller sent one: two keys would split the request over sandboxes.
        sent = headers_with_key(sent, key)
    trace_id = secrets.token_hex(16)
    sent.setdefault("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")
    try:
        content = body.encode() if body is not None else None
        resp = httpx.request(method.upper(), url, content=content, headers=sent, timeout=60)
    except httpx.HTTPError as exc:
        raise CliError(f"{method.upper()} {url}: {exc}") from exc
    hops = wait_for_hops(client, trace_id)
    return {"status": resp.status_code, "headers": dict(resp.headers), "body": resp.text,
            "trace_id": trace_id, "routing_key": key, "hops": hops,
            "path": path_of(hops)}


def wait_for_hops(client: ApiClient, trace_id: str, settle: float = 0.3,
                  limit: float = 3.0) -> list[dict[str, Any]]:
    """The trace's hops, once no new ones have arrived for `settle` seconds."""
    deadline = time.monotonic() + limit
    hops: list[dict[str, Any]] = []
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        found = client.get("/v1/hops", trace=trace_id, limit=1000)
        if len(found) != len(hops):
            hops = found
            stable_since = time.monotonic()
        elif hops and time.monotonic() - stable_since > settle:
            break
        time.sleep(0.05)
    return hops


def trace(trace_id: str, output: FormatOption = "table", api: ApiOption = None) -> None:
    """Print the path of any recorded trace (its id, or the start of it: tables show 12
    characters)."""
    if not trace_id.strip():
        raise CliError("TRACE_ID: give a trace id or its first characters (`laneway hops` "
                       "shows them)")
    hops = connect(api).get("/v1/hops", trace=trace_id.strip(), limit=1000)
    if hops:
        trace_id = hops[0]["trace_id"]  # whole, to copy
    if output == "json":
        print_json({"trace_id": trace_id, "path": path_of(hops), "hops": hops})
        return
    if not hops:
        raise CliError(f"no hops recorded for trace {trace_id} (hops are kept in a bounded "
                       "log; old ones are dropped)")
    console.print(f"trace {trace_id}: {path_of(hops)}")
    print_hops(hops)


def leaks(sandbox: Annotated[str | None, typer.Option(help="Only this sandbox's key")] = None,
          output: FormatOption = "table", api: ApiOption = None) -> None:
    """List propagation leaks: where a routing key was lost, found by trace or by the process
    that made a call without it (a fork: certain; a baseline process serving a keyed request:
    probable)."""
    found = connect(api).get("/v1/leaks", sandbox=sandbox)
    if output == "json":
        print_json(found)
        return
    if not found:
        console.print("no propagation leaks recorded")
        return
    rows = table("DROPPED BY", "PROCESS", "CALLING", "PATH", "WHILE SERVING", "TRACE", "HOW")
    for leak in found:
        how = leak.get("found_by", "trace")
        if leak.get("certainty") == "probable":
            how += " (probable)"
        rows.add_row(leak["service"], leak.get("process") or leak["service"], leak["lost_at"],
                     leak["path"], leak.get("serving") or "-", leak["trace_id"] or "-", how)
    console.print(rows)
    console.print("Each service above received the key but made a call without it: propagate "
                  "`baggage` (OpenTelemetry's default propagators do) on that call.")


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    from laneway.core.duration import parse_duration
    try:
        return time.time() - parse_duration(value)
    except ValueError as exc:
        raise CliError(f"--since: {exc}") from exc


def captures(
    service: Annotated[str | None, typer.Option(help="Only this service's exchanges")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last 10m, 2h, ...")] = None,
    sandbox: Annotated[str | None, typer.Option(
        help="Only requests carrying this sandbox's key")] = None,
    run: Annotated[str | None, typer.Option(help="Only what this run captured")] = None,
    capture_id: Annotated[str | None, typer.Option("--id", help="Only this exchange")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest)")] = 50,
    output: Annotated[str, typer.Option("--output", "-o", help="table, json or jsonl")] =
    "table",
    api: ApiOption = None,
) -> None:
    """List captured exchanges: request and answer, credentials hashed. `-o jsonl` exports
    them, one per line. Captured are the services in router.capture_services (laneway.yaml),
    sandboxes with `capture: true`, and runs with `laneway run --capture`."""
    if output not in ("table", "json", "jsonl"):
        raise CliError(f"-o {output}: choose table, json or jsonl")
    found = connect(api).get("/v1/captures", service=service, since=_since(since),
                             sandbox=sandbox, run=run, id=capture_id, limit=limit)
    if output == "json":
        print_json(found)
        return
    if output == "jsonl":
        import json
        for capture in found:
            sys.stdout.write(json.dumps(capture) + "\n")
        return
    if not found:
        filtered = any(x is not None for x in (service, since, sandbox, run, capture_id))
        console.print("no captured exchanges" + (" match" if filtered else "") + ": set "
                      "router.capture_services in laneway.yaml (e.g. [web]), `capture: true` "
                      "on a sandbox, or use `laneway run --capture`, and send traffic")
        return
    rows = table("ID", "TIME", "SERVICE", "SERVED BY", "CALLER", "REQUEST", "STATUS", "BODY")
    for capture in found:
        served = capture["service"] if capture["destination"] == "baseline" else \
            f"{capture['service']}@{capture['destination']}"
        request = capture["request"]
        rows.add_row(capture.get("id", ""),
                     time.strftime("%H:%M:%S", time.localtime(capture["at"])),
                     capture["service"], served, capture.get("caller") or "-",
                     f"{request['method']} {request['target']}"[:60],
                     str(capture["response"]["status"]),
                     f"{len(capture['response']['body'])} B"
                     + (" (cut)" if capture.get("truncated") else ""))
    console.print(rows)


def diff(
    sandbox: Annotated[str, typer.Option(help="The sandbox to compare with the baseline")],
    service: Annotated[str | None, typer.Option(help="Only this service's captures")] = None,
    since: Annotated[str | None, typer.Option(help="Only captures of the last 10m, 2h, ...")]
    = None,
    capture: Annotated[str | None, typer.Option(
        "--capture", help="Replay one captured exchange (its ID in `laneway captures`) or what "
        "a run captured (its run ID)")] = None,
    header: Annotated[list[str] | None, typer.Option(
        "--header", "-H", help="'Name: value' sent with every replayed request (repeatable): "
        "credentials, which captures keep only hashed")] = None,
    unsafe: Annotated[bool, typer.Option(
        "--unsafe", help="Replay POST, PUT, DELETE too (they write to the shared baseline's "
        "data again)")] = False,
    relative: Annotated[float | None, typer.Option(
        min=0, max=0.999, help="Report a field when more than this share of its differences "
        "is not noise (default: laneway.yaml diff.relative, 0.2)")] = None,
    absolute: Annotated[float | None, typer.Option(
        min=0, max=0.999, help="...and its unexplained differences exceed this share of the "
        "requests (default: diff.absolute, 0.0003)")] = None,
    output: FormatOption = "table",
    api: ApiOption = None,
) -> None:
    """Replay captured requests against the baseline and the sandbox, and report what the
    sandbox changed: red (a removed field, a type or status-class change), yellow (values
    beyond the baseline's own noise). Exit code 1 when something is red.

    Without --capture: the baseline's captured requests and the sandbox's own."""
    _check_format(output)
    if unsafe:
        console.print("warning: --unsafe replays writes three times each against the shared "
                      "baseline's data", style="yellow")
    params: dict[str, Any] = {"sandbox": sandbox, "unsafe": unsafe}
    if service:
        params["service"] = service
    if since:
        params["since"] = _since(since)
    if capture:
        params["capture"] = capture
    if relative is not None:
        params["relative"] = relative
    if absolute is not None:
        params["absolute"] = absolute
    found = connect(api).request("POST", "/v1/diffs", params=params,
                                 json={"headers": list(header or [])}, timeout=600)
    if output == "json":
        print_json(found)
    elif output == "md":
        sys.stdout.write(render_markdown_diff(found))
    else:
        print_diff(found)
    if found.get("red"):
        raise typer.Exit(1)


def render_markdown_diff(diff: dict[str, Any]) -> str:
    from laneway.core.runs import render_diff_markdown
    return "\n".join(render_diff_markdown(diff)) + "\n"


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(run)
    app.add_typer(runs_app, name="runs")
    app.command()(request)
    app.command()(trace)
    app.command()(leaks)
    app.command()(captures)
    app.command()(diff)
