"""`laneway sandbox …` and `laneway routegroup …`."""

from __future__ import annotations

import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

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
from laneway.client import ApiClient, CliError, connect

__all__ = ["group_app", "sandbox_app"]

sandbox_app = typer.Typer(help="Create, inspect and delete sandboxes.", no_args_is_help=True)
group_app = typer.Typer(help="Route groups: one routing key across matching sandboxes.",
                        no_args_is_help=True)

ApiOption = Annotated[str | None, typer.Option("--api", help="Control plane URL (token from "
                                               "LANEWAY_TOKEN); default: find .laneway/")]
OutputOption = Annotated[Output, typer.Option("-o", "--output", help="table or json")]
FileOption = Annotated[Path, typer.Option("-f", "--file", help="YAML file ('-' for stdin)")]
ShowSecretsOption = Annotated[bool, typer.Option(
    "--show-secrets", help="Print env values, resource params and outputs as applied; by "
    "default secret-looking ones (password, token, key, ...) are *** and URLs hide passwords")]


def _reveal(show_secrets: bool) -> dict[str, Any]:
    return {"reveal_secrets": "true"} if show_secrets else {}


def _read_specs(file: Path) -> list[tuple[dict[str, Any], str]]:
    """Every document of the file (`---` between sandboxes), each with the source its errors
    name (`sb.yaml`, or `sb.yaml (document 2)` when there are several)."""
    from laneway.core.spec import SpecError, load_yaml_documents  # pydantic: only when needed

    source = "<stdin>" if str(file) == "-" else str(file)
    try:
        text = sys.stdin.read() if source == "<stdin>" else file.read_text()
    except OSError as exc:
        raise CliError(f"{source}: cannot read the file: {exc.strerror}") from exc
    try:
        docs = load_yaml_documents(text, source)
    except SpecError as exc:
        raise CliError(exc.render()) from exc
    out = []
    for i, data in enumerate(docs):
        where = f"{source} (document {i + 1})" if len(docs) > 1 else source
        name = _name_of(data)
        if not isinstance(name, str) or not name:
            raise CliError(f"{where}: name: required (a DNS label, at most 40 characters)")
        if source != "<stdin>" and isinstance(data.get("forks"), list):
            # A fork's relative `cwd` is relative to the file that says it (another checkout
            # beside this one, say), not to wherever laneway runs.
            import os

            for fork in data["forks"]:
                cwd = fork.get("cwd") if isinstance(fork, dict) else None
                if isinstance(cwd, str) and cwd and not os.path.isabs(cwd):
                    fork["cwd"] = os.path.normpath(os.path.join(file.resolve().parent, cwd))
        out.append((data, where))
    names = [_name_of(data) for data, _ in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CliError(f"{source}: sandbox {twice[0]!r} is in the file more than once")
    return out


def _name_of(data: dict[str, Any]) -> Any:
    """A sandbox file's name, or a `Sandbox` resource's (a cluster's operator takes both)."""
    if data.get("kind") == "Sandbox" and isinstance(data.get("metadata"), dict):
        return data["metadata"].get("name")
    return data.get("name")


def _read_spec(file: Path) -> tuple[dict[str, Any], str]:
    docs = _read_specs(file)
    if len(docs) > 1:
        raise CliError(f"{docs[0][1].rpartition(' (')[0]}: one document expected, found "
                       f"{len(docs)}")
    return docs[0]


@sandbox_app.command("apply")
def sandbox_apply(
    file: FileOption,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every fork is ready "
                                       "(exit 1 if one fails)")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits")] = 120.0,
    create_only: Annotated[bool, typer.Option(
        "--create-only", help="Refuse to replace a sandbox that exists")] = False,
    if_generation: Annotated[int | None, typer.Option(
        "--if-generation", min=0, help="Refuse unless the sandbox is at this generation "
        "(`sandbox get` shows it; 0: it must not exist): someone else's change is never "
        "overwritten")] = None,
    output: OutputOption = Output.table,
    show_secrets: ShowSecretsOption = False,
    api: ApiOption = None,
) -> None:
    """Create or update sandboxes (idempotent by name); a file may hold several, separated by
    `---`: all are checked before any is applied. Says what changed: created, updated (with
    a diff of the spec) or unchanged."""
    docs = _read_specs(file)
    if if_generation is not None and len(docs) > 1:
        raise CliError("--if-generation: one sandbox per file with it (the file has "
                       f"{len(docs)})")
    client = connect(api)
    guards = {**({"createOnly": "true"} if create_only else {}),
              **({"ifGeneration": if_generation} if if_generation is not None else {})}
    if len(docs) > 1 or guards:
        for data, source in docs:  # all or none: a mistake in the third applies nothing
            client.request("PUT", f"/v1/sandboxes/{_name_of(data)}", json=data,
                           source=source, params={"dryRun": "true", **guards})
    params = {**_reveal(show_secrets), **({"wait": min(timeout, 30.0)} if wait else {}),
              **guards}
    views = [client.request("PUT", f"/v1/sandboxes/{_name_of(data)}", json=data,
                            source=source, params=params) for data, source in docs]
    if wait:
        deadline = time.monotonic() + timeout - 30.0
        views = [_wait_ready(client, view["name"], deadline, view, show_secrets)
                 for view in views]
    if output is Output.json:
        print_json(views[0] if len(views) == 1 else views)
    else:
        for view in views:
            status = view["status"]
            console.print(f"sandbox {view['name']} {view.get('change', 'applied')}  "
                          f"generation {view['generation']}  routing key "
                          f"[bold]{view['routingKey']}[/bold]  "
                          f"{phase_style(status['phase'])}: {status['message']}")
            for line in view.get("specDiff") or []:
                style = "green" if line.startswith("+") else \
                    "red" if line.startswith("-") else "dim"
                console.print(f"  {line}", style=style, markup=False, highlight=False)
            _print_previews(view, limit=6)
    if wait:
        for view in views:
            if view["status"]["phase"] != "ready" and not view["status"].get("addressDown"):
                raise CliError(f"sandbox {view['name']} is not ready: "
                               f"{view['status']['message']}")


def _print_previews(view: dict[str, Any], limit: int | None = None) -> None:
    """One line per preview URL (`http://<name>--<service>.localhost:<port>/`), in the API's
    order: the baseline's entry points first."""
    previews: dict[str, str] = view.get("previews") or {}
    ordered = list(previews)
    shown = ordered if limit is None else ordered[:limit]
    width = max((len(service) for service in shown), default=0)
    for service in shown:
        console.print(f"preview {service:<{width}}  {previews[service]}", markup=False,
                      highlight=False, soft_wrap=True)
    if len(shown) < len(ordered):
        console.print(f"… and {len(ordered) - len(shown)} more previews: laneway sandbox get "
                      f"{view['name']}", markup=False)


def _wait_ready(client: ApiClient, name: str, deadline: float,
                view: dict[str, Any], show_secrets: bool) -> dict[str, Any]:
    # A fork at an address that is down is the developer's to start: not waited for.
    while view["status"]["phase"] == "pending" and not view["status"].get("addressDown") \
            and time.monotonic() < deadline:
        left = max(0.1, min(30.0, deadline - time.monotonic()))
        view = client.get(f"/v1/sandboxes/{name}", wait=left, **_reveal(show_secrets))
    return view


@sandbox_app.command("list")
def sandbox_list(output: OutputOption = Output.table, show_secrets: ShowSecretsOption = False,
                 api: ApiOption = None) -> None:
    """List sandboxes with their routing keys and status."""
    data = connect(api).get("/v1/sandboxes", **_reveal(show_secrets))
    if output is Output.json:
        print_json(data)
        return
    if not data:
        console.print("no sandboxes")
        return
    rows = table("NAME", "ROUTING KEY", "PHASE", "FORKS", "LABELS", "EXPIRES", "MESSAGE")
    for sb in data:
        expires = "-" if not sb["expiresAt"] else \
            since(2 * time.time() - sb["expiresAt"]).replace(" ago", "")
        rows.add_row(sb["name"], sb["routingKey"], phase_style(sb["status"]["phase"]),
                     ", ".join(f["service"] for f in sb["forks"]) or "-",
                     ",".join(f"{k}={v}" for k, v in sb["labels"].items()) or "-",
                     expires, sb["status"]["message"])
    console.print(rows)


@sandbox_app.command("get")
def sandbox_get(name: str, output: OutputOption = Output.table,
                show_secrets: ShowSecretsOption = False, api: ApiOption = None) -> None:
    """Show one sandbox: routing key, forks (their env, secrets masked) and their processes."""
    sb = connect(api).get(f"/v1/sandboxes/{name}", **_reveal(show_secrets))
    if output is Output.json:
        print_json(sb)
        return
    status = sb["status"]
    console.print(f"[bold]{sb['name']}[/bold]  routing key [bold]{sb['routingKey']}[/bold]  "
                  f"{phase_style(status['phase'])}: {status['message']}")
    console.print(f"baggage: laneway-key={sb['routingKey']}")
    if sb["labels"]:
        console.print("labels: " + ", ".join(f"{k}={v}" for k, v in sb["labels"].items()))
    _print_previews(sb)
    if sb.get("capture"):
        console.print(f"capture: on (its requests at every service; laneway captures "
                      f"--sandbox {sb['name']})", markup=False)
    if status.get("resources"):
        resources = table("RESOURCE", "PLUGIN", "PHASE", "OUTPUTS / MESSAGE")
        for res in status["resources"]:
            detail = res["message"] if res["phase"] != "ready" else \
                ", ".join(f"{k}={v}" for k, v in res["outputs"].items())
            resources.add_row(res["name"], res["plugin"], phase_style(res["phase"]), detail)
        console.print(resources)
    rows = table("FORK", "PHASE", "PID", "RESTARTS", "MESSAGE")
    for fork in status["forks"]:
        rows.add_row(f"{fork['service']}@{sb['name']}", phase_style(fork["phase"]),
                     str(fork["pid"] or "-"), str(fork["restarts"]),
                     fork["message"] or (f"last went down: {fork['lastFailure']}"
                                         if fork.get("lastFailure") else ""))
    console.print(rows)
    for fork in sb["forks"]:
        if fork.get("image"):  # a fork on Kubernetes: a Deployment running this image
            console.print(f"image of {fork['service']}@{sb['name']}: {fork['image']}",
                          markup=False, highlight=False)
        if fork.get("env"):
            console.print(f"env of {fork['service']}@{sb['name']}: " + ", ".join(
                f"{k}={v}" for k, v in fork["env"].items()), markup=False)


class EnvFormat(StrEnum):
    shell = "shell"
    dotenv = "dotenv"
    json = "json"


@sandbox_app.command("env")
def sandbox_env(
    name: str,
    service: str,
    format: Annotated[EnvFormat, typer.Option(
        "--format", help="shell (export lines: eval \"$(laneway sandbox env …)\"), dotenv "
        "(for IDE run configurations), or json")] = EnvFormat.shell,
    api: ApiOption = None,
) -> None:
    """Print the environment laneway gives SERVICE forked in sandbox NAME (the baseline's env,
    the fork's overrides, PORT, the routing key): to run that fork yourself, under a debugger.

    Secrets are printed as they are: this output is for starting the process."""
    data = connect(api).get(f"/v1/sandboxes/{name}/env", service=service,
                            reveal_secrets="true")
    env: dict[str, str] = data["env"]
    if format is EnvFormat.json:
        print_json(data)
        return
    if format is EnvFormat.dotenv:
        for key, value in env.items():
            print(f"{key}={_dotenv_quote(value)}")
        return
    import shlex

    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    if data.get("address") is None and data.get("forked"):
        print(f"# PORT is chosen at each start of the fork laneway runs; to run it yourself, "
              f"fork {service} with `address: 127.0.0.1:PORT` (or use `laneway sandbox exec`)",
              file=sys.stderr)


def _dotenv_quote(value: str) -> str:
    if value and all(c.isalnum() or c in "_-./:@,+%" for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


@sandbox_app.command("exec", context_settings={"allow_interspersed_args": False})
def sandbox_exec(
    name: str,
    service: str,
    command: Annotated[list[str], typer.Argument(help="The command, after --")],
    api: ApiOption = None,
) -> None:
    """Run COMMAND in the foreground as SERVICE's fork in sandbox NAME: with the fork's
    environment and a PORT to listen on, health-checked, and given the sandbox's key while it
    runs; when it exits the sandbox is as it was (no fork of SERVICE, or the one it had).
    Ctrl-C goes to COMMAND; laneway's exit code is COMMAND's."""
    import os
    import signal
    import socket
    import subprocess

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("name the command to run after --, e.g. laneway sandbox exec "
                       f"{name} {service} -- python app.py")
    client = connect(api)
    before = client.get(f"/v1/sandboxes/{name}", reveal_secrets="true")
    original = next((f for f in before["forks"] if f["service"] == service), None)
    address = (original or {}).get("address")
    if address is None:
        with socket.socket() as sock:  # a free port for the command, as laneway picks them
            sock.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{sock.getsockname()[1]}"
    watched = {"service": service, "address": address,
               **{k: v for k, v in (original or {}).items()
                  if k in ("env", "health", "startup_timeout", "cwd")}}
    changed = original is None or original.get("address") is None
    if changed:
        _put_forks(client, name, before, watched, service)
    try:
        data = client.get(f"/v1/sandboxes/{name}/env", service=service, reveal_secrets="true")
        env = {**os.environ, **data["env"]}
        print(f"laneway: {service}@{name} is `{' '.join(command)}` on {address} while it "
              f"runs (key {data['routingKey']})", file=sys.stderr)
        try:
            proc = subprocess.Popen(command, env=env)
        except OSError as exc:
            raise CliError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from exc
        # The command shares the terminal (a debugger's prompt must read it): Ctrl-C reaches
        # it from there, so laneway itself only waits; a SIGTERM sent to laneway is passed on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda sig, _frame: proc.send_signal(sig))
        code = proc.wait()
    finally:
        if changed:
            after = client.get(f"/v1/sandboxes/{name}", reveal_secrets="true")
            _put_forks(client, name, after, original, service)
            print(f"laneway: {service}@{name} is back to "
                  f"{'its fork' if original else 'the baseline'}", file=sys.stderr)
    raise typer.Exit(code if code >= 0 else 128 - code)


def _put_forks(client: ApiClient, name: str, view: dict[str, Any],
               fork: dict[str, Any] | None, service: str) -> None:
    """Apply sandbox `view` again with its fork of `service` replaced by `fork` (None: no
    fork of it), everything else as it is."""
    forks = [f for f in view["forks"] if f["service"] != service]
    if fork is not None:
        forks.append(fork)
    spec: dict[str, Any] = {"name": name, "labels": view.get("labels") or {}, "forks": forks}
    if view.get("ttl"):
        spec["ttl"] = view["ttl"]
    if view.get("capture"):
        spec["capture"] = True
    if view.get("resources"):
        spec["resources"] = view["resources"]
    client.request("PUT", f"/v1/sandboxes/{name}", json=spec)


@sandbox_app.command("delete")
def sandbox_delete(name: str, api: ApiOption = None) -> None:
    """Delete a sandbox: its forks stop and its key routes to the baseline."""
    connect(api).request("DELETE", f"/v1/sandboxes/{name}")
    console.print(f"sandbox {name} deleted")


@sandbox_app.command("logs")
def sandbox_logs(
    name: str,
    service: Annotated[str | None, typer.Option("--service", "-s", help="Which fork "
                                                "(needed when there are several)")] = None,
    follow: FollowOption = False,
    tail: TailOption = 200,
    since: SinceOption = None,
    grep: GrepOption = None,
    api: ApiOption = None,
) -> None:
    """Print a fork's log (its stdout and stderr, across restarts, time-stamped)."""
    print_logs(api, f"/v1/sandboxes/{name}/logs",
               {"service": service} if service else {}, follow, tail, since, grep)


def print_logs(api: str | None, path: str, params: dict[str, Any], follow: bool, tail: int,
               since: str | None, grep: str | None) -> None:
    """A log from the API (a fork's or a baseline service's), or followed until Ctrl-C."""
    client = connect(api)
    params = {**params, "tail": tail}
    if since:
        params["since"] = since
    if grep:
        params["grep"] = grep
    if not follow:
        sys.stdout.write(str(client.get(path, **params)))
        return
    try:
        for text in client.stream(path, follow="true", **params):
            sys.stdout.write(text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


@group_app.command("apply")
def group_apply(file: FileOption, output: OutputOption = Output.table,
                api: ApiOption = None) -> None:
    """Create or update a route group (idempotent by name)."""
    data, source = _read_spec(file)
    view = connect(api).request("PUT", f"/v1/routegroups/{data['name']}", json=data,
                                source=source)
    if output is Output.json:
        print_json(view)
        return
    console.print(f"route group {view['name']} applied  routing key "
                  f"[bold]{view['routingKey']}[/bold]  {view['status']['message']}")
    _print_previews(view, limit=6)


@group_app.command("list")
def group_list(output: OutputOption = Output.table, api: ApiOption = None) -> None:
    """List route groups."""
    data = connect(api).get("/v1/routegroups")
    if output is Output.json:
        print_json(data)
        return
    if not data:
        console.print("no route groups")
        return
    rows = table("NAME", "ROUTING KEY", "MATCH", "SANDBOXES", "MESSAGE")
    for group in data:
        rows.add_row(group["name"], group["routingKey"],
                     ",".join(f"{k}={v}" for k, v in group["match"]["labels"].items()),
                     ", ".join(group["status"]["sandboxes"]) or "-",
                     group["status"]["message"])
    console.print(rows)


@group_app.command("get")
def group_get(name: str, output: OutputOption = Output.table, api: ApiOption = None) -> None:
    """Show one route group: its key, the sandboxes it spans, conflicts."""
    group = connect(api).get(f"/v1/routegroups/{name}")
    if output is Output.json:
        print_json(group)
        return
    status = group["status"]
    console.print(f"[bold]{group['name']}[/bold]  routing key [bold]{group['routingKey']}"
                  f"[/bold]  {status['message']}")
    console.print("sandboxes: " + (", ".join(status["sandboxes"]) or "none"))
    _print_previews(group)
    for conflict in status["conflicts"]:
        console.print(f"[red]conflict[/red]: {conflict['service']} is forked by "
                      f"{', '.join(conflict['sandboxes'])}")


@group_app.command("delete")
def group_delete(name: str, api: ApiOption = None) -> None:
    """Delete a route group; its key then routes to the baseline."""
    connect(api).request("DELETE", f"/v1/routegroups/{name}")
    console.print(f"route group {name} deleted")
