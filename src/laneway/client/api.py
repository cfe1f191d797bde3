"""Finding an environment and talking to its control plane (shared by the CLI and MCP).

An environment is found through `.laneway/` in the current directory or a parent (its `api.json`
and `token`), given with `--api URL` and `LANEWAY_TOKEN`, or selected as a context (a
cluster's operator: `laneway --context NAME`, `client.contexts`). Every API failure becomes a
`CliError` whose message is what the user reads after `Error:`.
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from laneway.client import contexts
from laneway.core.layout import StateLayout, find_state_dir

__all__ = ["ApiClient", "AsyncApiClient", "CliError", "Target", "api_error", "connect",
           "locate", "resolve"]


class CliError(Exception):
    """A failure to report as one `Error: …` line (plus optional detail lines), exit code 1."""

    def __init__(self, message: str, details: list[str] | None = None, code: int = 1,
                 status: int = 0, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.code = code
        self.status = status  # the API's HTTP status (0: no answer)
        self.fields = fields or []  # the API's `errors`: [{"field", "message"}]


class ApiClient:
    def __init__(self, url: str, token: str, layout: StateLayout | None = None,
                 headers: dict[str, str] | None = None, context: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.layout = layout
        self.context = context
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(30.0, read=660.0),
                                  headers={"authorization": f"Bearer {token}",
                                           **(headers or {})})

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, source: str | None = None,
                **kwargs: Any) -> Any:
        return _decode(self.raw(method, path, source=source, **kwargs))

    def raw(self, method: str, path: str, *, source: str | None = None,
            **kwargs: Any) -> httpx.Response:
        """The response itself (for headers and bytes); errors as for `request`."""
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc, self.context) from exc
        if resp.status_code >= 400:
            raise _api_error(resp, source)
        return resp

    def stream(self, path: str, **params: Any) -> Iterator[str]:
        try:
            with self._http.stream("GET", path, params=params,
                                   timeout=httpx.Timeout(30.0, read=None)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _api_error(resp, None)
                yield from resp.iter_text()
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc, self.context) from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                 if v is not None})


def _unreachable(url: str, exc: httpx.TransportError, context: str | None = None) -> CliError:
    """Transport failures of both clients, in one wording."""
    if isinstance(exc, httpx.TimeoutException):
        return CliError(f"the control plane at {url} did not answer in time")
    if isinstance(exc, httpx.ConnectError) and context:
        return CliError(f"cannot reach the operator of context {context} at {url}: is it "
                        "running, and is the URL (or the port-forward) right? (`laneway "
                        "context list`)")
    if isinstance(exc, httpx.ConnectError):
        return CliError(f"cannot reach the control plane at {url}: is laneway running? "
                        "(`laneway up` in the folder of laneway.yaml)")
    return CliError(f"cannot reach the control plane at {url}: {exc}")


def _decode(resp: httpx.Response) -> Any:
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.json()
    return resp.text


def api_error(resp: httpx.Response, source: str | None) -> CliError:
    """The `CliError` of an API answer >= 400: its message, field errors and status."""
    return _api_error(resp, source)


def _api_error(resp: httpx.Response, source: str | None) -> CliError:
    try:
        body = resp.json()
    except ValueError:
        return CliError(f"the control plane answered {resp.status_code}: {resp.text[:200]}",
                        status=resp.status_code)
    message = str(body.get("message", f"HTTP {resp.status_code}"))
    errors = body.get("errors") or []
    prefix = f"{source}: " if source else ""
    if len(errors) > 1:
        return CliError(f"{prefix}{len(errors)} problems:",
                        [f"{e['field']}: {e['message']}" if e.get("field") else e["message"]
                         for e in errors], status=resp.status_code, fields=errors)
    return CliError(prefix + message, status=resp.status_code, fields=errors)


@dataclass(slots=True)
class Target:
    """Where a client's requests go."""

    url: str
    token: str
    layout: StateLayout | None = None
    headers: dict[str, str] = field(default_factory=dict)
    context: str | None = None


def resolve(api: str | None = None, start: Path | None = None,
            token: str | None = None) -> Target:
    """`--api URL` (+ token or LANEWAY_TOKEN), else the selected context (`--context`,
    LANEWAY_CONTEXT, `laneway context use`), else the `.laneway/` found from `start`."""
    if api:
        token = token or os.environ.get("LANEWAY_TOKEN")
        if not token:
            raise CliError("--api needs the API token in LANEWAY_TOKEN (it is in the "
                           "environment's .laneway/token)")
        return Target(api, token)
    try:
        name = contexts.selected()
        if name is not None:
            reached = contexts.reach(name)
            atexit.register(reached.close)  # a port-forward ends with the command
            return Target(reached.url, reached.token, None, reached.headers, name)
    except contexts.ContextError as exc:
        raise CliError(str(exc)) from exc
    layout = find_state_dir(start or Path.cwd())
    if layout is None:
        raise CliError("no laneway environment here: run `laneway up` in the folder of your "
                       "laneway.yaml, pass --api URL with LANEWAY_TOKEN, or select a cluster "
                       "with --context NAME (`laneway context add`)")
    try:
        info = json.loads(layout.api.read_text())
    except FileNotFoundError as exc:
        raise CliError(f"laneway is not running for {layout.root.parent} (run `laneway up`)") \
            from exc
    except ValueError as exc:
        raise CliError(f"{layout.api} is damaged; run `laneway down` and `laneway up`") from exc
    return Target(str(info["url"]), layout.token.read_text().strip(), layout)


def locate(api: str | None = None, start: Path | None = None,
           token: str | None = None) -> tuple[str, str, StateLayout | None]:
    """(API URL, token, layout): `resolve`'s, for callers that need no more."""
    target = resolve(api, start, token)
    return target.url, target.token, target.layout


def connect(api: str | None = None, start: Path | None = None) -> ApiClient:
    """A client for `--api URL` (+ LANEWAY_TOKEN), the selected context, or the `.laneway/`
    found from `start`."""
    target = resolve(api, start)
    return ApiClient(target.url, target.token, target.layout, target.headers, target.context)


class AsyncApiClient:
    """The same API from asyncio code (the MCP server); errors are `CliError`s too."""

    def __init__(self, url: str, token: str, headers: dict[str, str] | None = None,
                 context: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.context = context
        self._http = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(30, read=90),
                                       headers={"authorization": f"Bearer {token}",
                                                **(headers or {})})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if kwargs.get("params"):
            kwargs["params"] = {k: v for k, v in kwargs["params"].items() if v is not None}
        try:
            resp = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc, self.context) from exc
        if resp.status_code >= 400:
            raise _api_error(resp, None)
        return _decode(resp)

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)
