"""`laneway mcp`: the verification loop as MCP tools for coding agents.

Built on the official `mcp` SDK (`MCPServer`). Every tool is a thin call to the control plane's
HTTP API; results are small JSON objects (a context window is a budget: long text is cut with a
note saying how to get more); failures raise `ToolError` with what happened and the next useful
step. Nothing waits longer than ~50 s: a long run returns its id for `get_run` to poll.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable
from typing import Annotated, Any

import httpx
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import TextContent
from pydantic import BaseModel, ConfigDict, Field

from laneway import __version__
from laneway.client import AsyncApiClient, CliError
from laneway.core.baggage import headers_with_key
from laneway.core.experiment_report import compact
from laneway.core.grpc import grpc_code_name
from laneway.core.hops import key_conflict_note

__all__ = ["build_server"]

# The longest any tool blocks (LANEWAY_MCP_WAIT_S: shorter, for a client with a short timeout).
WAIT_S = float(os.environ.get("LANEWAY_MCP_WAIT_S", "50"))
BODY_CHARS = 2000
LOG_CHARS = 6000

INSTRUCTIONS = """laneway runs sandboxes on a shared, running baseline of services. A sandbox forks
only the services you change; requests carrying its routing key reach the forks at every hop and
the baseline everywhere else. The loop: list_services -> apply_sandbox (fork the service you
changed, with your command/env) -> run_tests (your test command, against the sandbox) -> read
the report (verdict, fork errors, leaks), get_logs, send_request/get_trace -> fix the fork ->
apply_sandbox again -> run_tests until the verdict is `passed`. A `vacuous` verdict means the
tests passed without ever reaching your fork: they proved nothing about your change. To compare
several approaches (one sandbox each), run_experiment runs their tests and a load step against
the baseline and gives one verdict per sandbox."""


class ForkArg(BaseModel):
    """One forked service, as in the sandbox YAML."""

    model_config = ConfigDict(extra="forbid")

    service: str | None = Field(default=None, description=(
        "the baseline service to fork (see list_services); on a Kubernetes cluster give "
        "`workload` instead"))
    workload: str | None = Field(default=None, description=(
        "Kubernetes only: the baseline Deployment to fork (with `image` and/or `env`)"))
    image: str | None = Field(default=None, description=(
        "Kubernetes only: the fork's image (default: the Deployment's own)"))
    container: str | None = Field(default=None, description=(
        "Kubernetes only: the container to change (default: the first)"))
    run: str | list[str] | None = Field(
        default=None, description="command for the fork; omit to keep the baseline's")
    env: dict[str, str] | None = Field(
        default=None, description="environment variables merged over the baseline's (results "
        "show secret-looking values as ***: pass the real values, never ***)")
    address: str | None = Field(
        default=None, description="HOST:PORT (this machine) of a process you started "
        "yourself, instead of `run`: laneway health-checks it and routes the key to it but "
        "never starts or stops it; get_sandbox says while it is down")
    cwd: str | None = Field(
        default=None, description="folder to run the fork in (another checkout), relative to "
        "the folder of laneway.yaml")


def _cut(text: str, limit: int, how: str) -> tuple[str, str | None]:
    if len(text) <= limit:
        return text, None
    return text[-limit:], f"cut to the last {limit} characters; {how}"


def _fail(exc: CliError, hint: str = "") -> ToolError:
    details = "; ".join(exc.details)
    message = exc.message + (f" {details}" if details else "")
    return ToolError(message + (f" Next: {hint}" if hint else ""))


async def _call(request: Awaitable[Any], hint: str = "") -> Any:
    """A tool's call to the control plane; its error, with the next step, as the tool's."""
    try:
        return await request
    except CliError as exc:
        raise _fail(exc, hint) from exc


def _compact_sandbox(view: dict[str, Any]) -> dict[str, Any]:
    status = view["status"]
    forks = []
    by_service = {f["service"]: f for f in view["forks"]}
    for fork in status.get("forks", []):
        item = {"service": fork["service"], "phase": fork["phase"],
                "restarts": fork["restarts"]}
        if fork.get("message"):
            item["message"] = fork["message"]
        spec = by_service.get(fork["service"], {})
        item.update({k: spec[k] for k in ("run", "env") if k in spec})
        forks.append(item)
    if not forks:
        forks = view["forks"]
    return {"name": view["name"], "routing_key": view["routingKey"],
            "baggage": f"laneway-key={view['routingKey']}", "phase": status["phase"],
            "ready": status["ready"], "message": status["message"], "labels": view["labels"],
            "ttl_s": view.get("ttl"), "generation": view.get("generation"), "forks": forks,
            **({"previews": view["previews"]} if view.get("previews") else {})}


def _compact_report(report: dict[str, Any]) -> dict[str, Any]:
    out = {k: report.get(k) for k in ("id", "sandbox", "routegroup", "status", "verdict",
                                      "exit_code", "duration_s", "forks_reached",
                                      "fork_responses", "hops")}
    if report.get("timed_out"):
        out["timed_out"] = True
    out["failures"] = report.get("failures", [])[:20]
    out["leaks"] = report.get("leaks", [])[:10]
    out["fork_errors"] = report.get("fork_errors", [])[-20:]
    if report.get("diff"):
        found = report["diff"]
        out["diff"] = {"summary": found.get("summary"),
                       "findings": [_compact_finding(f) for f in found.get("findings", [])[:15]]}
    if report.get("captured"):
        out["captured"] = report["captured"]
    out["output_tail"] = report.get("output_tail", [])[-25:]
    notes = [report.get("note") or "", key_conflict_note(int(report.get("key_conflicts") or 0))]
    if any(notes):
        out["note"] = " ".join(n for n in notes if n)
    if report.get("key_conflicts"):
        out["key_conflicts"] = report["key_conflicts"]
    if report.get("status") == "running":
        out["next"] = f"still running: call get_run(run_id='{report['id']}') to poll"
    elif report.get("verdict") == "failed":
        out["next"] = ("read failures and fork_errors; get_logs(sandbox=...) for more; fix the "
                       "fork and call apply_sandbox, then run_tests again")
    elif report.get("verdict") == "vacuous":
        out["next"] = ("make the test send the `baggage` header (LANEWAY_BAGGAGE env var) or "
                       "use a client that honours HTTP_PROXY, so requests reach the fork")
    elif report.get("verdict") == "interrupted":
        out["next"] = ("the laneway daemon stopped before the command finished, so this run "
                       "proves nothing; once `laneway up` runs again, call run_tests again")
    return out


def _hops(hops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"service": h["service"],
             "served_by": "baseline" if h["destination"] == "baseline"
             else f"{h['service']}@{h['destination']}",
             "status": h["status"], "ms": round(h["duration_ms"], 1),
             "request": f"{h['method']} {h['path']}"[:200],
             **({"error": h["error"]} if h.get("error") else {}),
             **({"key": h["routing_key"]} if h.get("routing_key") else {"key": None}),
             **({"key_conflict": True} if h.get("key_conflict") else {}),
             **({"grpc_status": grpc_code_name(h["grpc_status"])}
                if h.get("grpc_status") is not None else {})}
            for h in sorted(hops, key=lambda h: h["at"])]


def _conflicts_note(hops: list[dict[str, Any]]) -> str:
    return key_conflict_note(sum(1 for h in hops if h.get("key_conflict")))


def _path(hops: list[dict[str, Any]]) -> str:
    return " → ".join(h["served_by"] if h["served_by"] != "baseline" else h["service"]
                      for h in hops)


async def _run_here(api: AsyncApiClient, report: dict[str, Any], command: str | list[str],
                    cwd: str, timeout_s: float | None) -> dict[str, Any]:
    """A run whose command this server executes (a cluster's): its outcome posted back."""
    from laneway.client.runner import execute

    try:
        result = await execute(report, command, cwd=cwd, timeout_s=timeout_s)
    except Exception as exc:  # the run must end with a report all the same
        result = {"exit_code": None, "duration_s": 0.0,
                  "error": f"the MCP server could not run the command: {exc}"}
    answer: dict[str, Any] = await api.request("POST", f"/v1/runs/{report['id']}/result",
                                               json=result)
    return answer


def build_server(api: AsyncApiClient) -> MCPServer:
    server: MCPServer = MCPServer(name="laneway", version=__version__,
                                  instructions=INSTRUCTIONS)
    client_runs: dict[str, asyncio.Task[dict[str, Any]]] = {}  # kept while they run
    experiments: dict[str, asyncio.Task[dict[str, Any]]] = {}  # the same

    @server.tool(description=(
        "List the baseline's services: name, public URL (send requests there), protocol, "
        "health. Use it first, to know what can be forked and where to send requests."))
    async def list_services() -> dict[str, Any]:
        services = await _call(api.get("/v1/services"))
        return {"services": [{"name": s["name"], "url": s["url"],
                              "protocol": s.get("protocol", "http"), "phase": s["phase"],
                              **({"message": s["message"]} if not s["ready"] else {})}
                             for s in services]}

    @server.tool(description=(
        "List sandboxes with their routing keys, phase (ready/pending/failed) and forked "
        "services. Use it to find an existing sandbox before creating one."))
    async def list_sandboxes() -> dict[str, Any]:
        views = await _call(api.get("/v1/sandboxes"))
        return {"sandboxes": [{"name": v["name"], "routing_key": v["routingKey"],
                               "phase": v["status"]["phase"], "message": v["status"]["message"],
                               "forks": [f["service"] for f in v["forks"]]} for v in views]}

    @server.tool(description=(
        "Get one sandbox: routing key (and the ready `baggage` header value), phase, and each "
        "fork's phase, restarts, error message, run command and env, and its preview URLs "
        "(`previews`: service -> http://<sandbox>--<service>.localhost:PORT/, which a browser "
        "opens as the sandbox sees it; see screenshot_preview). Use it to poll a sandbox "
        "that is starting or to see why one failed."))
    async def get_sandbox(
        name: str,
        reveal_secrets: Annotated[bool, Field(description=(
            "env values whose names look secret (password, token, secret, key, ...) are "
            "masked as *** and URLs show *** for their password, unless this is true; set it "
            "only when you need a value itself"))] = False,
    ) -> dict[str, Any]:
        view = await _call(api.get(f"/v1/sandboxes/{name}",
                                   reveal_secrets="true" if reveal_secrets else None),
                           "list_sandboxes shows the sandboxes there are")
        return _compact_sandbox(view)

    @server.tool(description=(
        "Create or update a sandbox (idempotent by name): fork the services you changed, each "
        "with its own `run` command and/or `env` (the rest of the baseline definition is "
        "inherited). Only changed forks restart; the routing key stays the same. Waits until "
        "every fork is ready or one has failed, and says which; on failure the error carries "
        "the fork's last log lines. Returns the sandbox (routing key, phase, forks; "
        "secret-looking env values masked as ***, see get_sandbox)."))
    async def apply_sandbox(
        name: Annotated[str, Field(description="DNS label, at most 40 characters")],
        forks: Annotated[list[ForkArg], Field(description="services to fork")],
        labels: dict[str, str] | None = None,
        ttl: Annotated[str | None, Field(description="e.g. 30m, 2h, 1d")] = None,
        create_only: Annotated[bool, Field(description=(
            "fail instead of replacing a sandbox of that name (someone else's, say)"))] = False,
        if_generation: Annotated[int | None, Field(ge=0, description=(
            "apply only if the sandbox is still at this generation (from get_sandbox; 0: it "
            "must not exist), so that a change made meanwhile is never overwritten"))] = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name,
                                "forks": [f.model_dump(exclude_none=True) for f in forks]}
        if labels:
            body["labels"] = labels
        if ttl:
            body["ttl"] = ttl
        params: dict[str, Any] = {"wait": WAIT_S}
        if create_only:
            params["createOnly"] = "true"
        if if_generation is not None:
            params["ifGeneration"] = if_generation
        view = await _call(api.request("PUT", f"/v1/sandboxes/{name}", json=body,
                                       params=params),
                           "correct the arguments and call apply_sandbox again (a conflict: "
                           "get_sandbox, then apply on top of what is there)")
        result = _compact_sandbox(view)
        result["change"] = view.get("change", "")
        if view.get("specDiff"):
            result["spec_diff"] = view["specDiff"][:40]
        if result["phase"] == "failed":
            raise ToolError(
                f"sandbox {name} is not ready: {result['message']}. Next: fix the fork's run/env "
                f"and call apply_sandbox again; get_logs(sandbox='{name}') shows more.")
        if result["phase"] == "pending":
            result["next"] = f"still starting: call get_sandbox(name='{name}') to poll"
        return result

    @server.tool(description=(
        "Delete a sandbox: its forks stop and its routing key routes to the baseline again. "
        "Idempotent: deleting a missing sandbox reports that it is already gone."))
    async def delete_sandbox(name: str) -> dict[str, Any]:
        try:
            await api.request("DELETE", f"/v1/sandboxes/{name}")
        except CliError as exc:
            if "not found" in exc.message:
                return {"deleted": name, "note": "it did not exist"}
            raise _fail(exc) from exc
        return {"deleted": name}

    @server.tool(description=(
        "Send one HTTP request through the system, with a sandbox's routing key (omit sandbox "
        "for the baseline), and return the answer (status, body cut to 2000 characters) and "
        "the path it took: each hop's service, whether the baseline or a fork served it, "
        "status and time. Use it to check a change by hand or to see where a request fails."))
    async def send_request(
        url: Annotated[str, Field(description="a service's public URL plus path")],
        method: str = "GET",
        sandbox: str | None = None,
        headers: dict[str, str] | None = None,
        body: str | None = None,
    ) -> dict[str, Any]:
        sent = dict(headers or {})
        if sandbox:
            key = (await _call(api.get(f"/v1/sandboxes/{sandbox}"),
                               "list_sandboxes shows the sandboxes there are"))["routingKey"]
            # Replaced if the caller sent one: two keys would split the request over sandboxes.
            sent = headers_with_key(sent, key)
        trace_id = secrets.token_hex(16)
        sent["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        try:
            async with httpx.AsyncClient(timeout=WAIT_S) as client:
                resp = await client.request(method.upper(), url, headers=sent,
                                            content=body.encode() if body is not None else None)
        except httpx.HTTPError as exc:
            raise ToolError(f"{method.upper()} {url} failed: {exc!r}. Next: check the URL "
                            "with list_services") from exc
        hops = await _trace_hops(api, trace_id)
        text, note = _cut(resp.text, BODY_CHARS, "the request can be repeated with a narrower "
                          "query")
        result: dict[str, Any] = {
            "status": resp.status_code, "served_by": resp.headers.get("laneway-served-by"),
            "body": text, "trace_id": trace_id, "path": _path(hops), "hops": hops}
        notes = [note, _conflicts_note(hops)]
        if any(notes):
            result["note"] = " ".join(n for n in notes if n)
        return result

    @server.tool(description=(
        "Run a test command against a sandbox: it gets LANEWAY_ROUTING_KEY, LANEWAY_BAGGAGE (a "
        "ready `baggage` header value), LANEWAY_URL_<SERVICE>, LANEWAY_ADDR_<SERVICE> (host:port, "
        "for gRPC clients, which must send LANEWAY_BAGGAGE as `baggage` metadata) and an "
        "HTTP_PROXY that adds the key to plain-HTTP requests. Returns the run's report: verdict "
        "(passed only if the command passed AND every fork was reached; `vacuous` if it passed "
        "without reaching a fork), failed tests, errors the forks logged during the run, "
        "propagation leaks, output tail. Waits up to ~50 s, then returns the run id to poll "
        "with get_run."))
    async def run_tests(
        sandbox: str,
        command: Annotated[str | list[str], Field(
            description="a shell line (run with /bin/sh -c) or an argv list")],
        cwd: Annotated[str | None, Field(
            description="directory to run in (default: where the MCP server runs)")] = None,
        timeout_s: Annotated[float | None, Field(description="stop the command after this")] =
        600.0,
        allow_unreached: bool = False,
        diff: Annotated[bool, Field(description=(
            "also replay the run's GET/HEAD requests against the baseline and diff the answers: "
            "red = a removed field, a type or status-class change; yellow = values changed "
            "beyond the baseline's own noise"))] = False,
        capture: Annotated[bool, Field(description=(
            "capture the run's requests at every service, to diff them later with "
            "diff_sandbox(capture=<run id>)"))] = False,
    ) -> dict[str, Any]:
        # The command runs as this server's user would run it: with this process's
        # environment (the agent's), in its directory unless told otherwise. A cluster's
        # operator runs no commands (`executor: client`): this server runs it, and its
        # environment is not sent.
        here = api.context is not None
        report = await _call(api.request("POST", "/v1/runs", params={"wait": WAIT_S}, json={
            "sandbox": sandbox, "command": command,
            "cwd": None if here else cwd or os.getcwd(),
            "env": None if here else dict(os.environ), "timeout_s": timeout_s,
            "allow_unreached": allow_unreached, "diff": diff, "capture": capture}),
            "check the sandbox name (list_sandboxes) and the command")
        if report.get("executor") == "client":
            task = asyncio.get_running_loop().create_task(
                _run_here(api, report, command, cwd or os.getcwd(), timeout_s))
            client_runs[report["id"]] = task
            task.add_done_callback(lambda _: client_runs.pop(report["id"], None))
            done, _ = await asyncio.wait({task}, timeout=WAIT_S)
            if done:
                report = task.result()
        return _compact_report(report)

    @server.tool(description=(
        "Get a run's report by id (from run_tests), waiting up to wait_s (at most 50) seconds "
        "if it is still running. Returns the same compact report as run_tests."))
    async def get_run(run_id: str, wait_s: float = 30.0) -> dict[str, Any]:
        report = await _call(api.get(f"/v1/runs/{run_id}", wait=max(0.0, min(wait_s, WAIT_S))))
        return _compact_report(report)

    @server.tool(description=(
        "Read logs: a sandbox's fork (sandbox=..., plus service=... if it forks several) or a "
        "baseline service (service=... alone). Bounded by tail (lines, default 50), since "
        "(a duration back from now like 5m, or an ISO time) and grep (a case-insensitive "
        "regular expression). Lines start with the UTC time they were written."))
    async def get_logs(
        sandbox: str | None = None,
        service: str | None = None,
        tail: Annotated[int, Field(ge=1, le=2000)] = 50,
        since: str | None = None,
        grep: str | None = None,
    ) -> dict[str, Any]:
        params = {"tail": tail, "since": since, "grep": grep}
        if sandbox:
            text = await _call(api.get(f"/v1/sandboxes/{sandbox}/logs", service=service,
                                       **params))
        elif service:
            text = await _call(api.get(f"/v1/services/{service}/logs", **params))
        else:
            raise ToolError("name a sandbox (its fork's logs) or a service (the baseline's)")
        text, note = _cut(str(text), LOG_CHARS, "narrow it with tail, since or grep")
        result: dict[str, Any] = {"lines": text.splitlines()}
        if note:
            result["note"] = note
        return result

    @server.tool(description=(
        "Get the path of a recorded trace (trace id from send_request or a log line): each "
        "hop's service, whether baseline or a fork served it, routing key, status and time."))
    async def get_trace(trace_id: str) -> dict[str, Any]:
        hops = _hops(await _call(api.get("/v1/hops", trace=trace_id, limit=200)))
        if not hops:
            raise ToolError(f"no hops recorded for trace {trace_id}. Next: send_request returns "
                            "a trace id that is recorded")
        result = {"trace_id": trace_id, "path": _path(hops), "hops": hops}
        if conflicts := _conflicts_note(hops):
            result["note"] = conflicts
        return result

    @server.tool(description=(
        "List propagation leaks: where a sandbox's routing key was lost. Each names the service "
        "and the process (`service@sandbox` for a fork) whose outbound call dropped the "
        "`baggage` header, the call, the request it was serving, and how it was found (`trace`, "
        "or `caller`: the router saw which process made the keyless call; `probable` for a "
        "baseline process that was serving a keyed request). A leak means requests past that "
        "service never reach forks: fix the propagation in that service."))
    async def list_leaks(sandbox: str | None = None) -> dict[str, Any]:
        leaks = await _call(api.get("/v1/leaks", sandbox=sandbox, limit=50))
        return {"leaks": leaks}

    @server.tool(description=(
        "What a sandbox changed in the answers, beyond your own tests: replays captured "
        "requests (router.capture_services in laneway.yaml, a sandbox with capture: true, or "
        "a run with capture) without the sandbox's key, with it, and without it again, and "
        "diffs them. `red` = a removed field, a type "
        "or status-class change (likely a break for callers); `yellow` = values changed beyond "
        "the baseline's own noise (check they are intended); noise (timestamps, ids) is "
        "filtered. Returns a summary and the findings per endpoint and field path with both "
        "values and an example request. For a run's own requests use run_tests(diff=true)."))
    async def diff_sandbox(
        sandbox: str,
        service: Annotated[str | None, Field(description="only this service's captures")] =
        None,
        since_s: Annotated[float | None, Field(
            description="only captures of the last this many seconds")] = None,
        capture: Annotated[str | None, Field(
            description="replay one captured exchange (its id) or what a run captured (its "
                        "run id, from run_tests with capture)")] = None,
        headers: Annotated[list[str] | None, Field(
            description="'Name: value' sent with every replayed request: credentials, which "
                        "captures keep only hashed")] = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"sandbox": sandbox}
        if service:
            params["service"] = service
        if since_s:
            params["since"] = time.time() - since_s
        if capture:
            params["capture"] = capture
        found = await _call(api.request("POST", "/v1/diffs", params=params,
                                        json={"headers": headers or []}),
                            "check the sandbox name (list_sandboxes), and that captures exist")
        return {"summary": found.get("summary"), "red": found.get("red"),
                "yellow": found.get("yellow"),
                "findings": [_compact_finding(f) for f in found.get("findings", [])[:20]],
                "skipped": found.get("skipped", {}),
                **({"note": found["note"]} if found.get("note") else {})}

    @server.tool(description=(
        "Open a page in headless Chromium and return a screenshot (PNG) and what went wrong "
        "on it: console errors, uncaught page errors, failed or 4xx/5xx requests. Use it on a "
        "sandbox's preview URL (get_sandbox `previews`: http://<sandbox>--<service>."
        "localhost:PORT/...) to check a UI change as a user sees it, and on the baseline's "
        "URL to compare. Only pages of this machine can be opened."))
    async def screenshot_preview(
        url: Annotated[str, Field(description="a preview URL (or any URL on this machine), "
                                              "with path and query")],
        full_page: Annotated[bool, Field(description="the whole page, not only the "
                                                     "viewport")] = False,
        width: Annotated[int, Field(ge=320, le=3840)] = 1280,
        height: Annotated[int, Field(ge=240, le=2160)] = 800,
        wait_ms: Annotated[int, Field(ge=0, le=10_000, description=(
            "extra wait after the network settled, for pages that render late"))] = 500,
    ) -> list[TextContent | Image]:
        from laneway.mcp.browser import BrowserMissing, check_local_url, screenshot

        try:
            check_local_url(url)
        except ValueError as exc:
            raise ToolError(str(exc)) from exc
        try:
            shot = await asyncio.wait_for(screenshot(
                url, width=width, height=height, full_page=full_page, wait_ms=wait_ms),
                WAIT_S)
        except BrowserMissing as exc:
            raise ToolError(f"no browser: {exc}") from exc
        except TimeoutError as exc:
            raise ToolError(f"{url} did not finish loading within {WAIT_S:g}s; try a "
                            "smaller page or check get_logs of its service") from exc
        import json

        return [TextContent(type="text", text=json.dumps(shot.summary())),
                Image(data=shot.png, format="png")]

    @server.tool(description=(
        "Compare several approaches (sandboxes or route groups) to one change in one call, "
        "from an experiment file (experiment.yaml: sandboxes, tests, load, diff) or the same "
        "fields inline. Each sandbox's tests run as a run (as run_tests), then a load step "
        "sends one request template at a fixed rate to the baseline and every sandbox in "
        "interleaved short slices, and each sandbox's p95 (or the budget's percentile) and error "
        "rate are judged against the baseline measured in the same run. Returns one row per "
        "sandbox and one for the baseline: verdict (passed only if every check passed), tests "
        "verdict and run id, requests/errors/p50/p95/p99/ratio, budget outcome, diff red/yellow, "
        "and one plain sentence each. Waits up to ~50 s, then returns the experiment's id and "
        "progress: poll get_experiment."))
    async def run_experiment(
        file: Annotated[str | None, Field(description=(
            "path of an experiment file (relative to cwd); or give `experiment`"))] = None,
        experiment: Annotated[dict[str, Any] | None, Field(description=(
            "the experiment inline, as in the file: {name, sandboxes: [...], tests: argv or "
            "shell line, load: {request: 'GET ${services.web.url}/path', rate: '50/s', "
            "duration: '20s', budget: {p95: '1.3x', errors: '1%'}}, diff: true}"))] = None,
        cwd: Annotated[str | None, Field(description=(
            "folder the tests run in (default: the file's folder, else this server's)"))] =
        None,
    ) -> dict[str, Any]:
        from pathlib import Path

        from laneway.client.experiments import ExperimentError
        from laneway.client.experiments import run_experiment as run
        from laneway.core.experiments import parse_experiment, read_experiment
        from laneway.core.spec import SpecError

        if (file is None) == (experiment is None):
            raise ToolError("give either `file` (an experiment.yaml) or `experiment` (its "
                            "fields inline)")
        folder = cwd or os.getcwd()
        try:
            if file is not None:
                path = Path(folder) / file
                try:
                    text = path.read_text()
                except OSError as exc:
                    raise ToolError(f"{path}: cannot read it: {exc.strerror}") from exc
                spec = read_experiment(text, str(path))
                folder = cwd or str(path.resolve().parent / (spec.cwd or "."))
            else:
                spec = parse_experiment(experiment or {}, "experiment")
        except SpecError as exc:
            raise ToolError(exc.render() + " Next: fix that field and call again.") from exc
        started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_start(report: dict[str, Any]) -> None:
            if not started.done():
                started.set_result(report)

        task = asyncio.get_running_loop().create_task(
            run(api, spec, cwd=folder, file=file, started=on_start),
            name=f"laneway-mcp-experiment-{spec.name}")
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not started.done():
            failure = task.exception()
            if isinstance(failure, ExperimentError | CliError):
                raise ToolError(f"{failure} Next: check the names with list_sandboxes") \
                    from failure
            task.result()
        report = started.result()
        experiments[report["id"]] = task
        task.add_done_callback(lambda _: experiments.pop(report["id"], None))
        done, _ = await asyncio.wait({task}, timeout=WAIT_S)
        if done:
            try:
                return compact(task.result())
            except (ExperimentError, CliError) as exc:
                raise ToolError(f"experiment {report['id']} failed: {exc}; its report says "
                                "what it had: get_experiment") from exc
        return {**compact(report), "status": "running", "progress": report.get("progress"),
                "next": f"get_experiment(experiment_id={report['id']!r})"}

    @server.tool(description=(
        "Get an experiment's result by id (from run_experiment), waiting up to wait_s (at most "
        "50) seconds if it is still running: the same compact rows as run_experiment."))
    async def get_experiment(experiment_id: str, wait_s: float = 30.0) -> dict[str, Any]:
        task = experiments.get(experiment_id)
        if task is not None:
            await asyncio.wait({task}, timeout=max(0.0, min(wait_s, WAIT_S)))
        report = await _call(api.get(f"/v1/experiments/{experiment_id}"),
                             "experiment ids come from run_experiment")
        return compact(report)

    return server


def _compact_finding(finding: dict[str, Any]) -> dict[str, Any]:
    """A finding with its example's answers cut short, for a model's context."""
    example = dict(finding.get("example") or {})
    for side in ("baseline", "sandbox"):
        if isinstance(example.get(side), dict):
            answer = dict(example[side])
            answer["body"] = str(answer.get("body", ""))[:300]
            example[side] = answer
    return {**finding, "example": example}


async def _trace_hops(api: AsyncApiClient, trace_id: str) -> list[dict[str, Any]]:
    """The hops of a trace, once no new ones have arrived for a moment (they come in batches)."""
    deadline = time.monotonic() + 3.0
    hops: list[dict[str, Any]] = []
    stable = 0
    while time.monotonic() < deadline and stable < 4:
        found = await api.get("/v1/hops", trace=trace_id, limit=200)
        stable = stable + 1 if found and len(found) == len(hops) else 0
        hops = found
        await asyncio.sleep(0.05)
    return _hops(hops)
