"""The web UI: server-rendered pages over the control plane's API, mounted at `/ui`.

It is a client of the API like the CLI and MCP: every page is built from API calls made over
HTTP with the browser's session as the bearer token (`control/sessions.py`), never from the
store. Pages are Jinja2 templates; `static/ui.js` (about a hundred lines, no build step) keeps
the parts marked `data-live` current from a server-sent event stream and follows logs, and
every form works without it. The stack was chosen to need nothing from npm: Starlette (already
the API's), Jinja2 (Starlette's own template engine), plain CSS.

Sign-in: `laneway ui` prints `/ui/login?code=…` with a one-time code; this app trades it for a
session, keeps that in an HttpOnly cookie scoped to `/ui` and named after the port (two
environments on one machine keep their own), and redirects, so the code leaves the address bar.
Changes (apply, delete, diff) are POSTs whose `Origin` must be this UI's own: a page elsewhere,
a preview page included, cannot make the browser change anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from laneway.client.api import CliError, api_error
from laneway.core.duration import parse_duration
from laneway.core.experiment_report import cells as experiment_cells
from laneway.core.experiment_report import round_table
from laneway.core.hops import status_text
from laneway.core.runs import leak_sentence
from laneway.core.spec import SpecError, load_yaml_document

__all__ = ["ui_app"]

HERE = Path(__file__).parent
EVENT_INTERVAL = 1.0  # how often the event stream looks for changes
MAX_SPEC_BYTES = 256 * 1024


class _SignedOut(Exception):
    """The browser has no session (or it expired): show how to get one."""


def _ago(at: float | None) -> str:
    if not at:
        return "-"
    delta = time.time() - float(at)
    future = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = f"{delta:.0f}s"
    elif delta < 3600:
        text = f"{delta / 60:.0f}m"
    elif delta < 86400:
        text = f"{delta / 3600:.1f}h"
    else:
        text = f"{delta / 86400:.1f}d"
    return f"in {text}" if future else f"{text} ago"


def _clock(at: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else "-"


def _keep_masked(data: dict[str, Any], current: dict[str, Any]) -> None:
    """Env values a user left as `***` (how the form shows secrets) get the values they stand
    for, from the sandbox as it is, fork by fork."""
    now = {f["service"]: f.get("env") or {} for f in current.get("forks", [])}
    for fork in data.get("forks") or []:
        if not isinstance(fork, dict) or not isinstance(fork.get("env"), dict):
            continue
        before = now.get(fork.get("service"), {})
        for key, value in fork["env"].items():
            if value == "***" and key in before:
                fork["env"][key] = before[key]


def _duration(seconds: float) -> str:
    """7200 -> `2h`, 90 -> `90s`: the way a sandbox file says it."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _spec_yaml(view: dict[str, Any]) -> str:
    """A sandbox view as the file one would apply to get it again (masked values stay
    masked: re-applying `***` would replace the secret, so the form says so)."""
    spec: dict[str, Any] = {"name": view["name"]}
    if view.get("labels"):
        spec["labels"] = view["labels"]
    if view.get("ttl"):
        spec["ttl"] = _duration(float(view["ttl"]))
    if view.get("capture"):
        spec["capture"] = True
    if view.get("resources"):
        spec["resources"] = view["resources"]
    spec["forks"] = view.get("forks") or []
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


NEW_SANDBOX = """name: my-change
labels:
  owner: me
ttl: 2h
forks:
  - service: SERVICE
    env:
      VERSION: v2
"""


class _Api:
    """The API as the UI calls it: one connection pool, the browser's session per call."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(30, read=120))

    async def call(self, session: str, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = await self.http.request(method, path, headers={
                "authorization": f"Bearer {session}"}, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(f"the control plane at {self.url} did not answer: {exc}") from exc
        if resp.status_code == 401:
            raise _SignedOut
        if resp.status_code >= 400:
            raise api_error(resp, None)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.text


def ui_app(api_url: str) -> Starlette:
    api = _Api(api_url)
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["ago"] = _ago
    env.filters["clock"] = _clock
    env.filters["leak"] = leak_sentence
    env.filters["experiment_cells"] = experiment_cells
    env.filters["status"] = status_text
    env.filters["tojson_pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True)

    def cookie_name(request: Request) -> str:
        return f"laneway_ui_{request.url.port or 80}"

    def session_of(request: Request) -> str:
        session = request.cookies.get(cookie_name(request), "")
        if not session:
            raise _SignedOut
        return session

    def render(request: Request, template: str, http_status: int = 200,
               **context: Any) -> HTMLResponse:
        page = env.get_template(template).render(request=request, root="/ui", **context)
        return HTMLResponse(page, status_code=http_status,
                            headers={"cache-control": "no-store"})

    def same_origin(request: Request) -> bool:
        if not _local_host(request.headers.get("host", "")):
            return False
        origin = request.headers.get("origin")
        if origin is None:  # browsers send it on every POST; a client that does not: no
            return False
        return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def form_of(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_SPEC_BYTES:
            raise CliError(f"the form is larger than {MAX_SPEC_BYTES // 1024} KiB")
        parsed = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[-1] for k, v in parsed.items()}

    def page(handler: Any) -> Any:
        """A view: signed-out browsers get the sign-in page, API failures an error page."""
        async def run(request: Request) -> Response:
            try:
                response: Response = await handler(request, session_of(request))
            except _SignedOut:
                return render(request, "signed_out.html", http_status=401, title="Sign in")
            except CliError as exc:
                status = exc.status if 400 <= exc.status < 600 else 502
                return render(request, "error.html", http_status=status, title="Error",
                              message=exc.message, details=exc.details)
            return response
        return run

    # signing in and out

    async def login(request: Request) -> Response:
        code = request.query_params.get("code", "")
        try:
            resp = await api.http.post("/v1/ui/sessions", json={"code": code})
        except httpx.TransportError as exc:
            return render(request, "error.html", http_status=502, title="Error",
                          message=f"the control plane did not answer: {exc}", details=[])
        if resp.status_code != 200:
            return render(request, "signed_out.html", http_status=401, title="Sign in",
                          message=resp.json().get("message", "the link is not valid"))
        data = resp.json()
        out = RedirectResponse("/ui/", status_code=303)
        out.set_cookie(cookie_name(request), data["session"], httponly=True, samesite="lax",
                       path="/ui", max_age=int(data["expiresAt"] - time.time()))
        return out

    async def logout(request: Request) -> Response:
        session = request.cookies.get(cookie_name(request), "")
        if session and same_origin(request):
            with contextlib.suppress(CliError, _SignedOut):
                await api.call(session, "DELETE", "/v1/ui/sessions/current")
        out = RedirectResponse("/ui/", status_code=303)
        out.delete_cookie(cookie_name(request), path="/ui")
        return out

    # views

    async def overview_data(session: str) -> dict[str, Any]:
        status, sandboxes, groups = await asyncio.gather(
            api.call(session, "GET", "/v1/status"),
            api.call(session, "GET", "/v1/sandboxes"),
            api.call(session, "GET", "/v1/routegroups"))
        return {"status": status, "sandboxes": sandboxes, "groups": groups}

    @page
    async def overview(request: Request, session: str) -> Response:
        data = await overview_data(session)
        return render(request, "overview.html", title=data["status"]["name"], nav="overview",
                      **data)

    @page
    async def overview_fragment(request: Request, session: str) -> Response:
        return render(request, "overview_live.html", **(await overview_data(session)))

    async def sandbox_data(session: str, name: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(name, safe="")
        sandbox, hops = await asyncio.gather(
            api.call(session, "GET", f"/v1/sandboxes/{quoted}"),
            api.call(session, "GET", "/v1/hops", params={"sandbox": name, "limit": 200}))
        traces: dict[str, dict[str, Any]] = {}
        for hop in hops:
            trace = hop.get("trace_id") or ""
            if not trace:
                continue
            entry = traces.setdefault(trace, {"trace": trace, "at": hop["at"], "hops": 0,
                                              "first": f"{hop['method']} {hop['path']}",
                                              "service": hop["service"], "errors": 0})
            entry["hops"] += 1
            entry["errors"] += int(hop["status"] >= 500 or
                                   hop.get("grpc_status") not in (None, 0))
            if hop["at"] < entry["at"]:
                entry.update(at=hop["at"], first=f"{hop['method']} {hop['path']}",
                             service=hop["service"])
        recent = sorted(traces.values(), key=lambda t: t["at"], reverse=True)[:20]
        return {"sandbox": sandbox, "traces": recent}

    @page
    async def sandbox_view(request: Request, session: str) -> Response:
        name = request.path_params["name"]
        data = await sandbox_data(session, name)
        return render(request, "sandbox.html", title=f"Sandbox {name}", nav="overview",
                      spec=_spec_yaml(data["sandbox"]), errors=[], **data)

    @page
    async def sandbox_fragment(request: Request, session: str) -> Response:
        data = await sandbox_data(session, request.path_params["name"])
        return render(request, "sandbox_live.html", **data)

    @page
    async def group_view(request: Request, session: str) -> Response:
        name = urllib.parse.quote(request.path_params["name"], safe="")
        group = await api.call(session, "GET", f"/v1/routegroups/{name}")
        return render(request, "group.html", title=f"Route group {group['name']}",
                      nav="overview", group=group)

    @page
    async def new_sandbox(request: Request, session: str) -> Response:
        status = await api.call(session, "GET", "/v1/status")
        services = [s["name"] for s in status["services"]]
        spec = NEW_SANDBOX.replace("SERVICE", services[0] if services else "web")
        return render(request, "new_sandbox.html", title="New sandbox", nav="new",
                      spec=spec, errors=[], services=services)

    @page
    async def apply_sandbox(request: Request, session: str) -> Response:
        if not same_origin(request):
            return PlainTextResponse("refused: this form must be sent from laneway's UI "
                                     "(the Origin header did not match)", status_code=403)
        form = await form_of(request)
        text = form.get("spec", "")
        editing = form.get("editing", "")
        errors: list[dict[str, str]] = []
        try:
            data = load_yaml_document(text, "the sandbox")
        except SpecError as exc:
            errors = [{"field": f, "message": m} for f, m in exc.issues] or \
                [{"field": "", "message": exc.render()}]
            data = {}
        name = data.get("name") if isinstance(data, dict) else None
        if isinstance(name, int | float) and not isinstance(name, bool):
            name = data["name"] = str(name)  # `name: 123`: the API says what is wrong with it
        if not errors and (not isinstance(name, str) or not name):
            errors = [{"field": "name", "message": "required (a DNS label, at most 40 "
                       "characters)"}]
        if not errors and editing and name != editing:
            errors = [{"field": "name", "message": f"this form edits {editing!r}; to make "
                       f"a new sandbox, use New sandbox"}]
        if not errors:
            assert isinstance(name, str)
            path = f"/v1/sandboxes/{urllib.parse.quote(name, safe='')}"
            try:
                if editing:
                    # The form shows secrets as ***: one left as it was keeps its value.
                    current = await api.call(session, "GET", path,
                                             params={"reveal_secrets": "true"})
                    _keep_masked(data, current)
                # New sandbox never replaces one of the same name; editing never overwrites
                # a change made since the page was loaded.
                guard = {"ifGeneration": form["generation"]} \
                    if editing and form.get("generation", "").isdigit() \
                    else {} if editing else {"createOnly": "true"}
                await api.call(session, "PUT", path, json=data, params=guard)
            except CliError as exc:
                errors = exc.fields or [{"field": "", "message": exc.message}]
        if errors:
            template = "sandbox.html" if editing else "new_sandbox.html"
            extra: dict[str, Any] = {}
            if editing:
                extra = await sandbox_data(session, editing)
            return render(request, template, http_status=422, title="Fix the sandbox",
                          nav="overview" if editing else "new", spec=text, errors=errors,
                          services=[], **extra)
        return RedirectResponse(f"/ui/sandboxes/{urllib.parse.quote(str(name))}",
                                status_code=303)

    @page
    async def delete_sandbox(request: Request, session: str) -> Response:
        if not same_origin(request):
            return PlainTextResponse("refused: this form must be sent from laneway's UI",
                                     status_code=403)
        name = urllib.parse.quote(request.path_params["name"], safe="")
        await api.call(session, "DELETE", f"/v1/sandboxes/{name}")
        return RedirectResponse("/ui/?deleted=" + name, status_code=303)

    @page
    async def trace_view(request: Request, session: str) -> Response:
        trace = request.path_params["trace"]
        hops = await api.call(session, "GET", "/v1/hops", params={"trace": trace,
                                                                   "limit": 500})
        return render(request, "trace.html", title=f"Trace {trace[:12]}", nav="overview",
                      trace=trace, picture=path_picture(hops), hops=hops)

    def live_views(full: str, fragment: str, nav: str,
                   load: Callable[[Request, str], Awaitable[dict[str, Any]]],
                   title: Callable[[dict[str, Any]], str]) -> tuple[Any, Any]:
        """A page and its `data-live` part, from one loader: the part is re-rendered alone
        when the event stream says something changed."""
        @page
        async def whole(request: Request, session: str) -> Response:
            data = await load(request, session)
            return render(request, full, title=title(data), nav=nav, **data)

        @page
        async def part(request: Request, session: str) -> Response:
            return render(request, fragment, **(await load(request, session)))

        return whole, part

    async def load_runs(request: Request, session: str) -> dict[str, Any]:
        return {"runs": await api.call(session, "GET", "/v1/runs", params={"limit": 100})}

    async def load_run(request: Request, session: str) -> dict[str, Any]:
        run_id = urllib.parse.quote(request.path_params["run"], safe="")
        return {"report": await api.call(session, "GET", f"/v1/runs/{run_id}")}

    async def load_leaks(request: Request, session: str) -> dict[str, Any]:
        return {"leaks": await api.call(session, "GET", "/v1/leaks", params={"limit": 200})}

    runs_view, runs_fragment = live_views("runs.html", "runs_live.html", "runs", load_runs,
                                          lambda _: "Runs")
    run_view, run_fragment = live_views("run.html", "run_live.html", "runs", load_run,
                                        lambda data: f"Run {data['report']['id']}")
    leaks_view, leaks_fragment = live_views("leaks.html", "leaks_live.html", "leaks",
                                            load_leaks, lambda _: "Leaks")

    @page
    async def experiments_view(request: Request, session: str) -> Response:
        found = await api.call(session, "GET", "/v1/experiments", params={"limit": 100})
        return render(request, "experiments.html", title="Experiments", nav="experiments",
                      experiments=found)

    @page
    async def experiment_view(request: Request, session: str) -> Response:
        experiment_id = urllib.parse.quote(request.path_params["experiment"], safe="")
        report = await api.call(session, "GET", f"/v1/experiments/{experiment_id}")
        slices = round_table(report["load"]) if report.get("load") else ([], [])
        return render(request, "experiment.html", title=f"Experiment {report['name']}",
                      nav="experiments", report=report, slices=slices,
                      headers=["Target", "Tests", "Requests", "Errors", "p50", "p95", "p99",
                               "Ratio", "Budget", "Diff", "Verdict"])

    @page
    async def diffs_view(request: Request, session: str) -> Response:
        sandboxes = await api.call(session, "GET", "/v1/sandboxes")
        chosen = request.query_params.get("sandbox", "")
        return render(request, "diffs.html", title="Diffs", nav="diffs", sandboxes=sandboxes,
                      chosen=chosen, report=None, error="", since="")

    @page
    async def run_diff(request: Request, session: str) -> Response:
        if not same_origin(request):
            return PlainTextResponse("refused: this form must be sent from laneway's UI",
                                     status_code=403)
        form = await form_of(request)
        sandboxes = await api.call(session, "GET", "/v1/sandboxes")
        chosen = form.get("sandbox", "")
        since_text = form.get("since", "").strip()
        params: dict[str, Any] = {"sandbox": chosen}
        report, error = None, ""
        if since_text:
            try:
                params["since"] = time.time() - parse_duration(since_text)
            except ValueError:
                error = (f"Captured since: {since_text!r} is not a duration such as 90s, 10m "
                         "or 2h")
        if not error:
            try:
                report = await api.call(session, "POST", "/v1/diffs", params=params, json={})
            except CliError as exc:
                error = exc.message
        return render(request, "diffs.html", http_status=200 if report else 422, title="Diffs",
                      nav="diffs", sandboxes=sandboxes, chosen=chosen, report=report,
                      error=error, since=since_text)

    @page
    async def logs_view(request: Request, session: str) -> Response:
        status, sandboxes = await asyncio.gather(api.call(session, "GET", "/v1/status"),
                                                 api.call(session, "GET", "/v1/sandboxes"))
        sources = [(s["name"], f"{s['name']} (baseline)") for s in status["services"]]
        for sb in sandboxes:
            sources += [(f"{f['service']}@{sb['name']}", f"{f['service']}@{sb['name']} (fork)")
                        for f in sb["forks"]]
        chosen = request.query_params.get("source") or (sources[0][0] if sources else "")
        grep = request.query_params.get("grep", "")
        text = ""
        if chosen:
            path, extra = _logs_path(chosen)
            text = await api.call(session, "GET", path, params={
                **extra, "tail": 300, **({"grep": grep} if grep else {})})
        return render(request, "logs.html", title="Logs", nav="logs", sources=sources,
                      chosen=chosen, grep=grep, text=text)

    @page
    async def logs_stream(request: Request, session: str) -> Response:
        path, params = _logs_path(request.query_params.get("source", ""))
        params = {**params, "follow": "true", "tail": 1}
        if request.query_params.get("grep"):
            params["grep"] = request.query_params["grep"]

        async def events() -> AsyncIterator[bytes]:
            first = True
            async with api.http.stream("GET", path, params=params, headers={
                    "authorization": f"Bearer {session}"},
                    timeout=httpx.Timeout(30, read=None)) as resp:
                if resp.status_code >= 400:
                    yield b"event: failed\ndata: the logs cannot be followed\n\n"
                    return
                async for line in resp.aiter_lines():
                    if first:
                        first = False  # the tail line the page already shows
                        continue
                    yield b"data: " + line.encode() + b"\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})

    @page
    async def events(request: Request, session: str) -> Response:
        """`change` (at most once per `EVENT_INTERVAL`) whenever what the pages show may
        have changed: the status (services, sandboxes, route groups, the count of hop records
        received, which moves with traffic and so with paths and leaks) and the runs. Cheap
        calls only: the pages recompute what they show (leaks, say) when told."""
        async def stream() -> AsyncIterator[bytes]:
            last = ""
            yield b"retry: 2000\n\n"
            while not await request.is_disconnected():
                try:
                    parts = await asyncio.gather(
                        api.call(session, "GET", "/v1/status"),
                        api.call(session, "GET", "/v1/runs", params={"limit": 20}))
                except (CliError, _SignedOut):
                    yield b"event: signedout\ndata: sign in again\n\n"
                    return
                digest = hashlib.sha256(json.dumps(parts, sort_keys=True,
                                                   default=str).encode()).hexdigest()
                if last and digest != last:
                    yield b"event: change\ndata: " + digest[:12].encode() + b"\n\n"
                last = digest
                await asyncio.sleep(EVENT_INTERVAL)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})

    routes = [
        Route("/", overview),
        Route("/login", login),
        Route("/logout", logout, methods=["POST"]),
        Route("/live/overview", overview_fragment),
        Route("/sandboxes/new", new_sandbox),
        Route("/sandboxes", apply_sandbox, methods=["POST"]),
        Route("/sandboxes/{name}", sandbox_view),
        Route("/sandboxes/{name}/delete", delete_sandbox, methods=["POST"]),
        Route("/live/sandboxes/{name}", sandbox_fragment),
        Route("/routegroups/{name}", group_view),
        Route("/traces/{trace}", trace_view),
        Route("/runs", runs_view),
        Route("/live/runs", runs_fragment),
        Route("/runs/{run}", run_view),
        Route("/live/runs/{run}", run_fragment),
        Route("/experiments", experiments_view),
        Route("/experiments/{experiment}", experiment_view),
        Route("/leaks", leaks_view),
        Route("/live/leaks", leaks_fragment),
        Route("/diffs", diffs_view),
        Route("/diffs", run_diff, methods=["POST"]),
        Route("/logs", logs_view),
        Route("/logs/stream", logs_stream),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.api = api
    return app


def _local_host(host: str) -> bool:
    """A `Host` of this machine (127.0.0.1:PORT, localhost:PORT, [::1]:PORT): a name that
    resolves elsewhere is DNS rebinding, not a person at this machine."""
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return name in ("127.0.0.1", "localhost", "[::1]")


def _logs_path(source: str) -> tuple[str, dict[str, Any]]:
    """The API path of a log source: `service` (the baseline's) or `service@sandbox`."""
    service, _, sandbox = source.partition("@")
    if sandbox:
        return f"/v1/sandboxes/{urllib.parse.quote(sandbox, safe='')}/logs", {
            "service": service}
    return f"/v1/services/{urllib.parse.quote(service, safe='')}/logs", {}


def path_picture(hops: list[dict[str, Any]]) -> dict[str, Any]:
    """A request's path as a waterfall: one bar per hop, placed by when it started and how
    long it took, marked baseline or fork; plus the path in words (`web → pricing@sb`)."""
    ordered = sorted(hops, key=lambda h: h["at"])
    if not ordered:
        return {"rows": [], "width": 0, "height": 0, "path": "", "total_ms": 0}
    start = ordered[0]["at"]
    end = max(h["at"] + h["duration_ms"] / 1000 for h in ordered)
    total = max(end - start, 0.001)
    width, label_w, row_h = 760, 230, 30
    rows = []
    words: list[str] = []
    for i, hop in enumerate(ordered):
        fork = hop["destination"] not in ("", "baseline")
        served = f"{hop['service']}@{hop['destination']}" if fork else hop["service"]
        if served not in words:
            words.append(served)
        x = label_w + (hop["at"] - start) / total * (width - label_w - 10)
        w = max(3.0, hop["duration_ms"] / 1000 / total * (width - label_w - 10))
        grpc = hop.get("grpc_status")
        rows.append({"y": 10 + i * row_h, "x": round(x, 1), "w": round(w, 1), "label": served,
                     "fork": fork, "status": status_text(hop["status"], grpc),
                     "failed": hop["status"] >= 500 or grpc not in (None, 0),
                     "error": hop.get("error", ""),
                     "ms": hop["duration_ms"], "what": f"{hop['method']} {hop['path']}",
                     "key": bool(hop.get("routing_key"))})
    return {"rows": rows, "width": width, "height": 20 + len(rows) * row_h,
            "path": " → ".join(words), "total_ms": round(total * 1000, 1),
            "label_w": label_w}
