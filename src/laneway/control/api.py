"""The control plane's HTTP API (JSON, OpenAPI at /openapi.json, bearer-token auth).

Every client (CLI, MCP, UI) goes through this; it maps the control plane's exceptions to status
codes in one place: 422 with field paths for invalid specs, 404 for unknown names, 401 for a
missing or wrong token, 503 when the store refuses a write (disk full, read-only), and a JSON 500
(never a bare text page) for anything unexpected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema

from laneway import __version__
from laneway.control.diffs import captured_requests, replay_diff, thresholds_of
from laneway.control.errors import ControlError, Invalid, NotFound
from laneway.control.experiments import experiments_router
from laneway.control.plane import ControlPlane
from laneway.control.runs import RunManager, RunSpec
from laneway.control.sessions import Sessions
from laneway.core.duration import parse_duration
from laneway.core.feed import update_to_json
from laneway.core.hops import Hop
from laneway.core.logs import stamped_at
from laneway.core.runs import find_leaks, render_markdown
from laneway.core.secrets import mask_tree
from laneway.core.spec import HEADER_NAME_RE, RouteGroupSpec, SandboxSpec, format_loc

__all__ = ["create_app"]

_PUBLIC = frozenset({"/", "/healthz", "/openapi.json", "/docs", "/v1/ui/sessions"})
# What a browser session (the web UI's) may not do: stop the environment, mint more logins.
_NOT_FOR_SESSIONS = frozenset({"/v1/shutdown", "/v1/ui/logins"})

_RevealSecrets = Annotated[bool, Query(
    description="return env values as applied; by default secret-looking ones (names with "
                "password, token, secret, key, ...) are `***` and passwords in URLs are masked")]


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, **extra}, status_code=status)


def _replay_headers(body: bytes) -> list[tuple[str, str]]:
    """`{"headers": ["Name: value", ...]}` from a diff request's body (empty body: none)."""
    if not body.strip():
        return []
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise Invalid(f"the body is not JSON: {exc}") from exc
    listed = data.get("headers", []) if isinstance(data, dict) else None
    if not isinstance(listed, list):
        raise Invalid("headers: must be a list of \"Name: value\" strings", field="headers",
                      errors=[("headers", "must be a list")])
    out = []
    for i, item in enumerate(listed):
        name, sep, value = str(item).partition(":")
        if not sep or not HEADER_NAME_RE.fullmatch(name.strip()):
            raise Invalid(f"headers[{i}]: {str(item)[:60]!r} is not \"Name: value\" (e.g. "
                          "\"Authorization: Bearer …\")", field=f"headers[{i}]",
                          errors=[(f"headers[{i}]", "must be Name: value")])
        out.append((name.strip(), value.strip()))
    return out


def _spec_body(schema: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}}


def create_app(control: ControlPlane, token: str,
               shutdown: Callable[[], None] | None = None,
               runs: RunManager | None = None,
               routes_token: str | None = None,
               sessions: Sessions | None = None) -> FastAPI:
    app = FastAPI(title="laneway control plane", version=__version__,
                  description="Sandboxes, route groups, services and hops of one environment.")
    sessions = sessions if sessions is not None else Sessions()

    @app.middleware("http")
    async def authenticate(request: Request,
                           call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        # The web UI, mounted at /ui, signs browsers in itself and calls this API as a client.
        if path not in _PUBLIC and path != "/ui" and not path.startswith("/ui/"):
            given = request.headers.get("authorization", "").encode()
            # Processes get a read-only token that opens the routes feed and nothing else.
            reader = routes_token is not None and path == "/v1/routes" and \
                request.method == "GET" and hmac.compare_digest(
                    given, f"Bearer {routes_token}".encode())
            browser = given.startswith(b"Bearer ") and path not in _NOT_FOR_SESSIONS and \
                sessions.valid(given[7:].decode("latin-1"))
            if not reader and not browser and \
                    not hmac.compare_digest(given, f"Bearer {token}".encode()):
                return _error(401, "unauthorized", "missing or wrong API token: send "
                              "'authorization: Bearer <token>' (the CLI reads .laneway/token or "
                              "LANEWAY_TOKEN)")
            # Who the audit log names: the web UI's sessions apart from the token's holders.
            request.state.principal = "ui" if browser else "local"
        return await call_next(request)

    @app.exception_handler(ControlError)
    async def control_error(request: Request, exc: ControlError) -> JSONResponse:
        extra: dict[str, Any] = {}
        if exc.field or exc.errors:
            extra["field"] = exc.field
            extra["errors"] = [{"field": f, "message": m} for f, m in exc.errors]
        return _error(exc.status, exc.code, exc.message, **extra)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises after answering, so the server logs the traceback once.
        return _error(500, "internal", f"the control plane failed on {request.method} "
                      f"{request.url.path}: {type(exc).__name__}: {exc}; the daemon's log "
                      "(.laneway/daemon.log) has the traceback; retry, and report it if it "
                      "happens again")

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        """A browser that opens the control plane's address finds the web UI."""
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.post("/v1/ui/logins")
    async def new_login() -> dict[str, Any]:
        """A one-time code for the web UI (what `laneway ui` prints as a link): open
        /ui/login?code=CODE within two minutes; the code then becomes a browser session."""
        code, expires = sessions.new_code()
        return {"code": code, "path": f"/ui/login?code={code}", "expiresAt": expires}

    @app.post("/v1/ui/sessions")
    async def new_session(request: Request) -> JSONResponse:
        """Trade a login code for a session token (the UI's bearer token), once."""
        code = str((await _json_object(request)).get("code", ""))
        started = sessions.redeem(code)
        if started is None:
            return _error(401, "login_expired", "this login link was used already or is "
                          "more than two minutes old; run `laneway ui` for a new one")
        return JSONResponse({"session": started[0], "expiresAt": started[1]})

    @app.delete("/v1/ui/sessions/current")
    async def end_session(request: Request) -> dict[str, Any]:
        given = request.headers.get("authorization", "")
        sessions.end(given.removeprefix("Bearer "))
        return {"ended": True}

    @app.get("/v1/status")
    async def status(reveal_secrets: _RevealSecrets = False) -> dict[str, Any]:
        return _shown(control.status(), reveal_secrets)

    @app.get("/v1/services")
    async def services() -> list[dict[str, Any]]:
        return control.services()

    @app.get("/v1/services/{name}/logs")
    async def service_logs(name: str, tail: int = Query(200, ge=1, le=100_000),
                           follow: bool = False, since: str | None = None,
                           grep: str | None = None) -> Response:
        if name not in control.project.services:
            raise NotFound(f"service {name!r} not found; services: "
                           f"{', '.join(control.project.services)}")
        return _logs_response(control, name, tail, follow, since, grep)

    async def _settle(services: list[str] | None, wait: float) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        await control.next_pass(min(1.0, wait))
        state, message = control.settled(services)
        while state == "waiting" and time.monotonic() < deadline:
            await control.next_pass(min(0.5, max(0.0, deadline - time.monotonic())))
            state, message = control.settled(services)
        return {"state": state, "message": message}

    @app.post("/v1/services/{name}/restart")
    async def restart_service(name: str, request: Request,
                              wait: float = Query(0, ge=0, le=600, description=(
                                  "seconds to wait until the new process serves and the "
                                  "old one has stopped"))) -> dict[str, Any]:
        """Replace a baseline service's process make-before-break (no request fails)."""
        result = control.restart(name, principal=_principal(request))
        if wait:
            result.update(await _settle([name], wait))
        view = next(v for v in control.services() if v["name"] == name)
        return {**result, "serviceView": view}

    @app.post("/v1/reload")
    async def reload(request: Request, wait: float = Query(0, ge=0, le=600),
                     dry_run: bool = Query(False, alias="dryRun", description=(
                         "say what would change and change nothing"))) -> dict[str, Any]:
        """Read laneway.yaml again and apply it: changed services replaced make-before-break,
        new ones started, removed ones stopped (their sandboxes are told: `failed`)."""
        result = await control.reload(principal=_principal(request), dry_run=dry_run)
        if wait and not dry_run:
            touched = [c["service"] for c in result["changed"]] + result["added"]
            result.update(await _settle(touched, wait))
        return result

    async def _wait(name: str, wait: float) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        view = control.get_sandbox(name)
        # A fork at an address that is down is the developer's to start: not waited for.
        while view["status"]["phase"] == "pending" and not view["status"].get("addressDown") \
                and time.monotonic() < deadline:
            await control.next_pass(min(0.5, max(0.0, deadline - time.monotonic())))
            view = control.get_sandbox(name)
        return view

    @app.get("/v1/sandboxes")
    async def list_sandboxes(reveal_secrets: _RevealSecrets = False) -> list[dict[str, Any]]:
        return [_shown(view, reveal_secrets) for view in control.list_sandboxes()]

    @app.put("/v1/sandboxes/{name}", openapi_extra=_spec_body("SandboxSpec"))
    async def apply_sandbox(name: str, request: Request,
                            wait: float = Query(0, ge=0, le=600),
                            reveal_secrets: _RevealSecrets = False,
                            dry_run: bool = Query(False, alias="dryRun", description=(
                                "validate only, as an apply would, and store nothing")),
                            create_only: bool = Query(False, alias="createOnly", description=(
                                "409 if the sandbox exists: never replace one")),
                            if_generation: int | None = Query(None, alias="ifGeneration",
                                                              ge=0, description=(
                                "409 unless the sandbox is at this generation (0: it does "
                                "not exist): optimistic concurrency"))) -> JSONResponse:
        view, created = control.apply_sandbox(
            await _json_object(request), name=name, principal=_principal(request),
            dry_run=dry_run, create_only=create_only, if_generation=if_generation)
        if dry_run:
            return JSONResponse(view)
        if wait:
            what: dict[str, Any] = {k: view[k] for k in ("change", "specDiff") if k in view}
            await control.next_pass(1.0)
            view = {**await _wait(name, wait), **what}
        return JSONResponse(_shown(view, reveal_secrets), status_code=201 if created else 200)

    @app.get("/v1/sandboxes/{name}")
    async def get_sandbox(name: str, wait: float = Query(0, ge=0, le=600),
                          reveal_secrets: _RevealSecrets = False) -> dict[str, Any]:
        view = await _wait(name, wait) if wait else control.get_sandbox(name)
        return _shown(view, reveal_secrets)

    @app.delete("/v1/sandboxes/{name}")
    async def delete_sandbox(name: str, request: Request) -> dict[str, Any]:
        control.delete_sandbox(name, principal=_principal(request))
        await control.next_pass(1.0)
        return {"deleted": name}

    @app.get("/v1/sandboxes/{name}/env")
    async def sandbox_env(name: str, service: str,
                          reveal_secrets: _RevealSecrets = False) -> dict[str, Any]:
        """The environment laneway gives `service` forked in this sandbox (or would give it,
        when the sandbox does not fork it yet): to run that fork by hand."""
        return _shown(control.fork_env(name, service), reveal_secrets)

    @app.get("/v1/sandboxes/{name}/logs")
    async def sandbox_logs(name: str, service: str | None = None,
                           tail: int = Query(200, ge=1, le=100_000),
                           follow: bool = False, since: str | None = None,
                           grep: str | None = None) -> Response:
        view = control.get_sandbox(name)
        forks = [f["service"] for f in view["forks"]]
        if not forks:
            raise NotFound(f"sandbox {name!r} has no forks, so no logs")
        if service is None:
            if len(forks) > 1:
                raise Invalid(f"sandbox {name!r} forks {', '.join(forks)}: choose one with "
                              "--service", field="service",
                              errors=[("service", "required when a sandbox has several forks")])
            service = forks[0]
        if service not in forks:
            raise NotFound(f"sandbox {name!r} does not fork {service!r}; it forks "
                           f"{', '.join(forks)}")
        unit = control.unit_of_fork(name, service)
        if unit is None:
            raise NotFound(f"fork {service}@{name} has not started yet")
        return _logs_response(control, unit, tail, follow, since, grep)

    @app.get("/v1/routegroups")
    async def list_groups() -> list[dict[str, Any]]:
        return control.list_route_groups()

    @app.put("/v1/routegroups/{name}", openapi_extra=_spec_body("RouteGroupSpec"))
    async def apply_group(name: str, request: Request) -> JSONResponse:
        view, created = control.apply_route_group(await _json_object(request), name=name)
        await control.next_pass(1.0)
        return JSONResponse(control.get_route_group(view["name"]),
                            status_code=201 if created else 200)

    @app.get("/v1/routegroups/{name}")
    async def get_group(name: str) -> dict[str, Any]:
        return control.get_route_group(name)

    @app.delete("/v1/routegroups/{name}")
    async def delete_group(name: str) -> dict[str, Any]:
        control.delete_route_group(name)
        await control.next_pass(1.0)
        return {"deleted": name}

    @app.get("/v1/hops")
    async def hops(sandbox: str | None = None, trace: str | None = None,
                   key: str | None = None, since: float | None = None,
                   limit: int = Query(200, ge=1, le=100_000)) -> list[dict[str, Any]]:
        keys: set[str] | None = None
        if sandbox is not None:
            keys = control.keys_of_sandbox(sandbox)
        if key is not None:
            keys = (keys or set()) | {key}
        trace_id = _whole_trace_id(trace.lower()) if trace else None
        found: list[Hop] = control.hops.query(routing_keys=keys, destination=sandbox,
                                              trace_id=trace_id, since=since, limit=limit)
        return [h.to_json() for h in found]

    def _whole_trace_id(given: str) -> str:
        try:
            return control.hops.whole_trace_id(given)
        except ValueError as exc:
            raise Invalid(str(exc), field="trace", errors=[("trace", "ambiguous")]) from exc

    def _captured(*, service: str | None = None, since: float | None = None,
                  sandbox: str | None = None, run: str | None = None,
                  capture_id: str | None = None) -> list[dict[str, Any]]:
        """Captured exchanges, oldest first: of one service, since a time, carrying a
        sandbox's keys, of one run (its key, while it ran), or one exchange by its id."""
        keys = control.keys_of_sandbox(sandbox) if sandbox is not None else None
        window: tuple[float, float] | None = None
        if run is not None:
            report = _runs().get(run)
            keys = {report["routing_key"]}
            window = (report["started_at"] - 0.01, report.get("finished_at") or time.time())
        out = []
        for h in control.hops.captures():
            capture = h.capture
            if capture is None or (service is not None and h.service != service) \
                    or (since is not None and h.at < since) \
                    or (keys is not None and h.routing_key not in keys) \
                    or (window is not None and not window[0] <= h.at <= window[1]) \
                    or (capture_id is not None and capture.get("id") != capture_id):
                continue
            out.append({"id": capture.get("id", ""), "at": h.at, "service": h.service,
                        "destination": h.destination, "caller": h.caller,
                        "routing_key": h.routing_key, "trace_id": h.trace_id, **capture})
        return out

    @app.get("/v1/captures")
    async def captures(service: str | None = None, since: float | None = None,
                       sandbox: str | None = None, run: str | None = None,
                       id: str | None = None,
                       limit: int = Query(500, ge=1, le=100_000)) -> list[dict[str, Any]]:
        """Captured exchanges (router.capture_services, sandboxes with `capture: true`, runs
        with `capture`), oldest first, credentials hashed."""
        return _captured(service=service, since=since, sandbox=sandbox, run=run,
                         capture_id=id)[-limit:]

    @app.post("/v1/diffs")
    async def diff(request: Request, sandbox: str, service: str | None = None,
                   since: float | None = None, capture: str | None = None,
                   unsafe: bool = False,
                   relative: float | None = Query(None, ge=0, lt=1),
                   absolute: float | None = Query(None, ge=0, lt=1),
                   limit: int = Query(500, ge=1, le=10_000)) -> dict[str, Any]:
        """Replay captured requests without the sandbox's key, with it, and without it again,
        and diff the answers (control/diffs.py). `capture`: one exchange's id, or a run's id
        (the exchanges it captured); otherwise the baseline's captured requests and the
        sandbox's own. The JSON body may give `headers` ("Name: value") to send with every
        replayed request: credentials, which captures keep only hashed. In the body, not the
        URL, so that they stay out of logs."""
        rec = control.store.get("sandbox", sandbox)
        if rec is None:
            raise NotFound(f"sandbox {sandbox!r} not found; `laneway sandbox list` shows them")
        extra = _replay_headers(await request.body())
        if capture is not None and capture.startswith("r"):
            chosen = _captured(service=service, since=since, run=capture)
        elif capture is not None:
            chosen = _captured(service=service, since=since, capture_id=capture)
            if not chosen:
                raise NotFound(f"capture {capture!r} not found (captures are kept "
                               f"{control.hops.capture_max_age:g}s at most); `laneway "
                               "captures` lists them")
        else:
            keys = control.keys_of_sandbox(sandbox)
            chosen = [c for c in _captured(service=service, since=since)
                      if not c["routing_key"] or c["routing_key"] in keys]
        chosen = chosen[-limit:]
        if not chosen:
            where = f"service {service!r}" if service else "any service"
            if capture is not None:  # a run's id: an unknown exchange is answered above
                raise Invalid(f"run {capture} captured no requests"
                              + (f" at {where}" if service else "")
                              + "; run it with `laneway run --capture`")
            raise Invalid(f"no captured requests for {where}"
                          + (" in that time" if since else "") + "; capture some first: set "
                          "router.capture_services in laneway.yaml (e.g. [web]) and send "
                          "traffic, set `capture: true` on the sandbox, or use "
                          "`laneway run --capture` or `laneway run --diff`")
        ports = {name: svc.port for name, svc in control.project.services.items()}
        requests, note = captured_requests(chosen, ports, extra)
        report = await replay_diff(requests, rec.routing_key, unsafe=unsafe,
                                   thresholds=thresholds_of(control.project.diff, relative,
                                                            absolute))
        if note:
            report["note"] = note
        return {"sandbox": sandbox, **report}

    @app.get("/v1/routes")
    async def routes(since: int | None = None,
                     wait: float = Query(0, ge=0, le=60)) -> dict[str, Any]:
        """The routes feed for remote routers: a snapshot, or the changes after `since`."""
        update = await control.feed.next_update(since, wait) if wait else \
            control.feed.changes_since(since)
        return update_to_json(update, control.feed.version)

    def _runs() -> RunManager:
        if runs is None:
            raise NotFound("this control plane does not execute runs")
        return runs

    @app.post("/v1/runs", openapi_extra=_spec_body("RunSpec"))
    async def start_run(request: Request,
                        wait: float = Query(0, ge=0, le=60)) -> JSONResponse:
        """Start a command against a sandbox; poll GET /v1/runs/{id} for the report."""
        data = await _json_object(request)
        try:
            spec = RunSpec.model_validate(data)
        except ValidationError as exc:
            errors = [(format_loc(tuple(e["loc"])), str(e["msg"])) for e in exc.errors()]
            raise Invalid("; ".join(f"{f}: {m}" for f, m in errors), field=errors[0][0],
                          errors=errors) from exc
        report = await _runs().start(spec)
        if wait:
            report = await _runs().wait(report["id"], wait)
        return JSONResponse(report, status_code=201)

    @app.get("/v1/runs")
    async def list_runs(sandbox: str | None = None,
                        limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        return control.store.runs(sandbox, limit)

    @app.get("/v1/runs/{run_id}")
    async def get_run(run_id: str, wait: float = Query(0, ge=0, le=60),
                      format: str = Query("json", pattern="^(json|md)$")) -> Response:
        report = await _runs().wait(run_id, wait) if wait else _runs().get(run_id)
        if format == "md":
            return Response(render_markdown(report), media_type="text/markdown")
        return JSONResponse(report)

    @app.get("/v1/runs/{run_id}/output")
    async def run_output(run_id: str, offset: int = Query(0, ge=0)) -> Response:
        data, following = _runs().output(run_id, offset)
        status = _runs().get(run_id)["status"]
        return Response(data, media_type="text/plain", headers={
            "x-laneway-next-offset": str(following), "x-laneway-run-status": status})

    @app.post("/v1/runs/{run_id}/cancel")
    async def cancel_run(run_id: str) -> dict[str, Any]:
        return await _runs().cancel(run_id)

    # Experiments' reports: their clients run them and keep the reports here.
    app.include_router(experiments_router(control.store))

    @app.get("/v1/leaks")
    async def leaks(sandbox: str | None = None,
                    limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        """Where a routing key was lost: the service and process that made a call without it
        (found by trace, or by the calling process), and the request it was serving."""
        if sandbox is not None:
            keys = control.keys_of_sandbox(sandbox)
        else:
            keys = {r.routing_key for kind in ("sandbox", "routegroup")
                    for r in control.store.records(kind)}
        hops = control.hops.query(limit=10_000_000)
        return [leak.to_json() for leak in find_leaks(hops, keys)][-limit:]

    @app.get("/v1/audit")
    async def audit(limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        return [{"at": e.at, "principal": e.principal, "action": e.action, "kind": e.kind,
                 "name": e.name, "detail": e.detail} for e in control.store.audit_log(limit)]

    @app.post("/v1/shutdown")
    async def shutdown_daemon() -> dict[str, Any]:
        if shutdown is not None:
            asyncio.get_running_loop().call_soon(shutdown)
        return {"stopping": True}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            _, defs = models_json_schema(
                [(SandboxSpec, "validation"), (RouteGroupSpec, "validation"),
                 (RunSpec, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                defs.get("$defs", {})
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _shown(view: dict[str, Any], reveal_secrets: bool) -> dict[str, Any]:
    """A sandbox view (or the status) as clients see it: env values, resource params and
    outputs, commands and messages with their secrets masked, unless asked for raw values.
    Masking here, not in each client, means the CLI, MCP and UI cannot forget it."""
    if reveal_secrets:
        return view
    masked: dict[str, Any] = mask_tree(view)
    return masked


def _principal(request: Request) -> str:
    return str(getattr(request.state, "principal", "local"))


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError as exc:
        raise Invalid(f"the request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object")
    return data


def _since(value: str | None) -> float | None:
    """`since` as users give it: a duration back from now (`5m`), epoch seconds, or ISO 8601."""
    if value is None or value == "":
        return None
    with contextlib.suppress(ValueError):
        return time.time() - parse_duration(value)
    with contextlib.suppress(ValueError):
        return float(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Invalid(f"since: {value!r} is not a duration (5m), epoch seconds or an ISO time",
                      field="since", errors=[("since", "not a time")]) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _filter(lines: list[str], since: float | None, grep: str | None) -> list[str]:
    if since is not None:
        kept, keep = [], False
        for line in lines:
            at = stamped_at(line)
            if at is not None:  # unstamped lines belong with the line before
                keep = at >= since
            if keep:
                kept.append(line)
        lines = kept
    if grep:
        try:
            pattern = re.compile(grep, re.IGNORECASE)
        except re.error as exc:
            raise Invalid(f"grep: not a regular expression: {exc}", field="grep",
                          errors=[("grep", str(exc))]) from exc
        lines = [line for line in lines if pattern.search(line)]
    return lines


def _logs_response(control: ControlPlane, unit: str, tail: int, follow: bool,
                   since: str | None = None, grep: str | None = None) -> Response:
    path = control.runtime.log_path(unit)
    if path is None or not path.exists():
        return Response("", media_type="text/plain")
    if since or grep:
        lines = _filter(_tail(path, 10_000_000).splitlines(keepends=True), _since(since), grep)
        text = "".join(lines[-tail:])
    else:
        text = _tail(path, tail)
    if not follow:
        return Response(text, media_type="text/plain")
    return StreamingResponse(_follow(path, text), media_type="text/plain")


def _tail(path: Path, count: int) -> str:
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        chunk = min(size, max(65536, count * 200), 16 * 1024 * 1024)
        fh.seek(size - chunk)
        lines = fh.read().decode("utf-8", "replace").splitlines(keepends=True)
    if chunk < size and lines:
        lines = lines[1:]  # the first line is probably cut
    return "".join(lines[-count:])


async def _follow(path: Path, first: str) -> AsyncIterator[str]:
    yield first
    with path.open("rb") as fh:
        fh.seek(0, 2)
        while True:
            data = fh.read()
            if data:
                yield data.decode("utf-8", "replace")
            else:
                await asyncio.sleep(0.2)
