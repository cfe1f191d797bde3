"""`laneway`: the command line. Every command except `up` is a client of the control plane API.

Errors are one `Error: …` line (with detail lines where there are several problems) and exit
code 1; a user's mistake never prints a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from laneway.cli import commands_experiments, commands_k8s, commands_runs, commands_sandbox
from laneway.cli.daemon_control import down_environment, start_daemon
from laneway.cli.output import (
    FollowOption,
    GrepOption,
    Output,
    SinceOption,
    TailOption,
    console,
    phase_style,
    print_json,
    since,
    table,
)
from laneway.client import CliError, connect
from laneway.core.hops import status_text

__all__ = ["app", "main"]

app = typer.Typer(
    name="laneway",
    help="Request-level sandboxes on a shared, running baseline of microservices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(commands_sandbox.sandbox_app, name="sandbox")
app.add_typer(commands_sandbox.group_app, name="routegroup")
commands_runs.register(app)
app.add_typer(commands_experiments.experiment_app, name="experiment")
app.add_typer(commands_k8s.k8s_app, name="k8s")
app.add_typer(commands_k8s.context_app, name="context")

ApiOption = Annotated[str | None, typer.Option("--api", help="Control plane URL (token from "
                                               "LANEWAY_TOKEN); default: find .laneway/")]
OutputOption = Annotated[Output, typer.Option("-o", "--output", help="table or json")]


def _version(value: bool) -> None:
    if value:
        from laneway import __version__

        print(f"laneway {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit")] = False,
    context: Annotated[str | None, typer.Option(
        "--context", envvar="LANEWAY_CONTEXT", help="Talk to this context's control plane (a "
        "cluster's operator: `laneway context add`); `local`: the environment found here")] =
    None,
) -> None:
    """Request-level sandboxes on a shared, running baseline of microservices."""
    from laneway.client import contexts

    contexts.select(context)


@app.command()
def up(
    file: Annotated[Path, typer.Option("-f", "--file", help="The baseline definition")] =
    Path("laneway.yaml"),
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once the baseline is "
                                         "healthy; the daemon keeps running")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --detach waits for the baseline")] =
    120.0,
) -> None:
    """Start the control plane, the router and the baseline of laneway.yaml."""
    start_daemon(file, detach=detach, timeout=timeout)


@app.command()
def down(api: ApiOption = None) -> None:
    """Stop everything `laneway up` started here, forks included."""
    down_environment(api)


@app.command()
def status(
    output: OutputOption = Output.table,
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Do not mask secrets (passwords in URLs, tokens) in messages")] =
    False,
    api: ApiOption = None,
) -> None:
    """Show the baseline's services, the sandboxes and the route groups, with health."""
    client = connect(api)
    data = client.get("/v1/status", reveal_secrets="true" if show_secrets else None)
    if output is Output.json:
        print_json(data)
        return
    console.print(f"[bold]{data['name']}[/bold]  control plane {client.url}  "
                  f"up {since(data['startedAt']).removesuffix(' ago')}")
    services = table("SERVICE", "URL", "PHASE", "PID", "RESTARTS", "MESSAGE")
    for svc in data["services"]:
        protocol = svc.get("protocol", "http")
        url = svc["url"] if protocol == "http" else f"{svc['url']} ({protocol})"
        services.add_row(svc["name"], url, phase_style(svc["phase"]),
                         str(svc["pid"] or "-"), str(svc["restarts"]),
                         svc["message"] if not svc["ready"] else
                         f"last went down: {svc['lastFailure']}" if svc.get("lastFailure")
                         else "")
    console.print(services)
    if data.get("preview"):
        console.print(f"previews: {data['preview']['url']}  ·  web UI: laneway ui",
                      markup=False, highlight=False)
    if data.get("reconcileError"):
        console.print(f"[yellow]reconciling failed, retrying with backoff:[/yellow] "
                      f"{data['reconcileError']} (see .laneway/daemon.log)")
    if data["sandboxes"]:
        console.print()
        sandboxes = table("SANDBOX", "ROUTING KEY", "PHASE", "FORKS", "MESSAGE")
        for sb in data["sandboxes"]:
            sandboxes.add_row(sb["name"], sb["routingKey"], phase_style(sb["phase"]),
                              ", ".join(sb["forks"]) or "-", sb["message"])
        console.print(sandboxes)
    if data.get("routers"):  # a cluster's router sidecars, pushing their hop records
        console.print()
        routers = table("ROUTER", "HOPS SENT", "DROPPED", "LAST SEEN")
        for name, seen in sorted(data["routers"].items()):
            routers.add_row(name, str(seen["hops"]), str(seen["dropped"]),
                            since(seen["lastSeen"]))
        console.print(routers)
    if data["routeGroups"]:
        console.print()
        groups = table("ROUTE GROUP", "ROUTING KEY", "READY", "MESSAGE")
        for group in data["routeGroups"]:
            groups.add_row(group["name"], group["routingKey"], str(group["ready"]).lower(),
                           group["message"])
        console.print(groups)


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="The service (its baseline process, or its "
                                            "fork with --sandbox)")],
    sandbox: Annotated[str | None, typer.Option("--sandbox", help="The fork of SERVICE in "
                                                "this sandbox")] = None,
    follow: FollowOption = False,
    tail: TailOption = 200,
    since: SinceOption = None,
    grep: GrepOption = None,
    api: ApiOption = None,
) -> None:
    """Print a service's log: the baseline process's, or a sandbox's fork of it (stdout and
    stderr, across restarts, time-stamped)."""
    if sandbox:
        commands_sandbox.print_logs(api, f"/v1/sandboxes/{sandbox}/logs", {"service": service},
                                    follow, tail, since, grep)
    else:
        commands_sandbox.print_logs(api, f"/v1/services/{service}/logs", {}, follow, tail,
                                    since, grep)


WaitOption = Annotated[bool, typer.Option(
    "--wait/--no-wait", help="Wait until the new processes serve and the old ones stopped")]
TimeoutOption = Annotated[float, typer.Option(help="Seconds to wait at most")]


@app.command()
def restart(
    service: Annotated[str, typer.Argument(help="The baseline service to restart")],
    wait: WaitOption = True,
    timeout: TimeoutOption = 120.0,
    output: OutputOption = Output.table,
    api: ApiOption = None,
) -> None:
    """Replace a baseline service's process, make-before-break: the new one starts beside
    the old, gets the traffic once healthy, and the old one finishes its requests and stops,
    so no request fails. A new process that fails never gets the traffic."""
    result = connect(api).request("POST", f"/v1/services/{service}/restart",
                                  params={"wait": timeout if wait else 0})
    if output is Output.json:
        print_json(result)
    _settled(result, f"{service}: restarted", wait, timeout, quiet=output is Output.json)
    if output is not Output.json:
        view = result["serviceView"]
        old = ", ".join(result["replacing"]) or "nothing was running"
        console.print(f"{service}: now pid {view['pid']} ({view['unit']}); replaced {old}",
                      highlight=False, style="dim")


@app.command()
def reload(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change; change "
                                          "nothing")] = False,
    wait: WaitOption = True,
    timeout: TimeoutOption = 120.0,
    output: OutputOption = Output.table,
    api: ApiOption = None,
) -> None:
    """Apply an edited laneway.yaml to the running environment: changed services are
    replaced make-before-break, new ones start, removed ones stop (the sandboxes that fork
    them are told: they become failed). Forks of a changed service are replaced too."""
    params: dict[str, Any] = {"wait": timeout if wait and not dry_run else 0}
    if dry_run:
        params["dryRun"] = "true"
    result = connect(api).request("POST", "/v1/reload", params=params, source="laneway.yaml")
    if output is Output.json:
        print_json(result)
        _settled(result, "", wait and not dry_run, timeout, quiet=True)
        return
    would = "would be " if dry_run else ""
    changed = [f"{c['service']} ({', '.join(c['fields'])})" for c in result["changed"]]
    if not (changed or result["added"] or result["removed"] or result["restartNeeded"]):
        console.print("laneway.yaml: nothing changed", highlight=False)
        return
    console.print("laneway.yaml: " + ("dry run, nothing changed" if dry_run else "reloaded"),
                  highlight=False)
    rows = [("changed", ", ".join(changed), "replaced make-before-break"),
            ("added", ", ".join(result["added"]), "started"),
            ("removed", ", ".join(result["removed"]), "stopped"),
            ("unchanged", ", ".join(result["unchanged"]), "")]
    for what, names, how in rows:
        if names:
            console.print(f"  {what:<10} {names}" + (f"  ({would}{how})" if how else ""),
                          highlight=False)
    for sb in result["sandboxesFailed"]:
        console.print(f"  sandbox {sb['name']} {would or 'is now '}failed: it forks "
                      f"{', '.join(sb['forks'])}, no longer in laneway.yaml", highlight=False,
                      style="yellow")
    if result["restartNeeded"]:
        console.print(f"  not applied: {', '.join(result['restartNeeded'])} (takes effect at "
                      "the next `laneway down` and `laneway up`)", highlight=False,
                      style="yellow")
    if not dry_run:
        _settled(result, "baseline ready", wait, timeout)


def _settled(result: dict[str, Any], done: str, wait: bool, timeout: float,
             quiet: bool = False) -> None:
    """Report the end of a restart or reload that was waited for; failed or not finished in
    time is an error (exit 1) that says why, and that the old process keeps serving."""
    if not wait:
        return
    state, message = result.get("state"), result.get("message", "")
    if state == "failed":
        raise CliError(f"the new process failed: {message}",
                       ["the previous process (if any) keeps serving; see `laneway logs "
                        "SERVICE`, fix it and try again"])
    if state == "waiting":
        raise CliError(f"not finished after {timeout:g}s: {message}",
                       ["it goes on in the background; `laneway status` shows how it does"])
    if done and not quiet:
        console.print(done, highlight=False, style="green")


@app.command()
def hops(
    sandbox: Annotated[str | None, typer.Option(help="Hops made with this sandbox's key")] =
    None,
    trace: Annotated[str | None, typer.Option(help="Hops of one trace (its path)")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest)")] = 50,
    output: OutputOption = Output.table,
    api: ApiOption = None,
) -> None:
    """List recorded hops: which service, which version (baseline or fork), status, time."""
    data: list[dict[str, Any]] = connect(api).get("/v1/hops", sandbox=sandbox, trace=trace,
                                                  limit=limit)
    if output is Output.json:
        print_json(data)
        return
    if not data:
        console.print("no hops recorded" + (" for that filter" if sandbox or trace else ""))
        return
    rows = table("TIME", "TRACE", "SERVICE", "SERVED BY", "STATUS", "MS", "REQUEST")
    for hop in data:
        served = hop["service"] if hop["destination"] == "baseline" else \
            f"{hop['service']}@{hop['destination']}"
        rows.add_row(time.strftime("%H:%M:%S", time.localtime(hop["at"])),
                     hop["trace_id"][:12] or "-", hop["service"],
                     served + commands_runs.conflict_mark(hop),
                     status_text(hop["status"], hop.get("grpc_status")),
                     f"{hop['duration_ms']:.1f}", f"{hop['method']} {hop['path']}")
    console.print(rows)
    commands_runs.print_conflicts(data)
    if trace:
        console.print("path: " + commands_runs.path_of(data))


@app.command()
def ui(
    open_browser: Annotated[bool, typer.Option(
        "--open/--no-open", help="Open the link in a browser when one is available")] = True,
    api: ApiOption = None,
) -> None:
    """Print a one-time link that signs a browser into the web UI (and open it).

    The link carries a login code valid once, for two minutes; the API token itself never
    appears in a URL."""
    client = connect(api)
    login = client.request("POST", "/v1/ui/logins")
    url = f"{client.url}{login['path']}"
    console.print("Open the web UI (this link works once, within two minutes):",
                  highlight=False)
    print(url)
    if open_browser and _has_browser():
        import webbrowser

        if webbrowser.open(url):
            console.print("opened in your browser", style="dim", highlight=False)


def _has_browser() -> bool:
    """A browser to open a link in: a desktop session (or macOS, Windows); not over SSH, in
    CI or in a container without a display, where `webbrowser` would start a text browser."""
    import os

    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and \
        not os.environ.get("CI")


@app.command()
def mcp(
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP, not stdio")] =
    False,
    host: Annotated[str, typer.Option(help="--http: address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="--http: port")] = 8765,
    api: ApiOption = None,
    token: Annotated[str | None, typer.Option(help="API token for --api (or LANEWAY_TOKEN)")] =
    None,
) -> None:
    """Serve laneway's tools to coding agents over MCP (stdio by default)."""
    import os

    from laneway.client import contexts, locate

    name = None if api else contexts.selected()
    if name:
        try:  # the MCP server reaches it itself (its port-forward lives as long as it does)
            contexts.Contexts().get(name)
        except contexts.ContextError as exc:
            raise CliError(str(exc)) from exc
        os.environ["LANEWAY_CONTEXT"] = name
    else:
        locate(api, token=token)  # fail here, with a clear error, if there is no environment
    argv = [sys.executable, "-m", "laneway.mcp", "--host", host, "--port", str(port)]
    if http:
        argv.append("--http")
    if api:
        argv += ["--api", api]
    if token:
        argv += ["--token", token]
    os.execv(sys.executable, argv)


def main() -> None:
    import click

    # Typer 0.29 raises exceptions of its own copy of click (`typer._click`); older ones raise
    # click's. Both are a user's mistake: one message, never a traceback.
    usage_errors: tuple[type[Exception], ...] = (click.ClickException, typer.TyperException)
    exits: tuple[type[BaseException], ...] = (click.exceptions.Exit, typer.Exit)
    aborts: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort,
                                               KeyboardInterrupt)
    try:
        code = app(standalone_mode=False)
    except CliError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        for line in exc.details:
            print(f"  {line}", file=sys.stderr)
        sys.exit(exc.code)
    except exits as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except aborts:
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except usage_errors as exc:
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print(f"Error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
