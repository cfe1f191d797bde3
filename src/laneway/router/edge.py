"""The preview edge: one listener that serves `http://<sandbox>--<service>.localhost:<port>/`.

Each request's host names a sandbox (or route group) and a service (`core.preview.resolve`).
The edge merges the sandbox's key into the request's `baggage` (the page's own members stay;
a `laneway-key` member the page sent is replaced: the host decides) and forwards the request to
that service's router listener, which routes it as any other keyed request and records its
hop. A request that carries no `traceparent` gets a new one, so that its path can be shown.
The edge is the router's own HTTP/1.1 client side (`ClientConnection`), so framing, limits,
timeouts, WebSocket upgrades and backpressure are the router's; only the choice of upstream
and the `baggage` and `traceparent` rewrites are its own. It records no hops itself: the
service's router does, so a request's path starts at the service, as it would from a test.

A host that names a deleted or unknown sandbox gets a 404 page that says so (HTML for a browser,
the router's JSON error otherwise); never the baseline, which would show the unchanged system as
if it were the change. Browsers do not speak HTTP/2 without TLS, so the edge does not either.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from laneway.core.baggage import with_key
from laneway.core.preview import (
    Preview,
    PreviewMiss,
    index_page,
    miss_page,
    preview_url,
    resolve,
)
from laneway.core.routes import Upstream
from laneway.router.client import ClientConnection, ServiceContext
from laneway.router.exchange import Exchange
from laneway.router.headers import absolute_target
from laneway.router.responses import error_response

__all__ = ["Edge", "EdgeConnection"]

EDGE = "(preview edge)"  # the edge's context name: never a service's (service names are DNS labels)
MAX_LINKS = 200


class Edge:
    """What the edge's connections share: where the names and the service listeners are."""

    def __init__(self, host: str, names: Callable[[], Mapping[str, str]],
                 ports: Mapping[str, int],
                 pages: Callable[[str], bool] = lambda service: True) -> None:
        self.host = host
        self.names = names  # the routes table's names -> keys, read per request (it is replaced)
        self.ports = ports  # service -> the port of its router listener
        self.pages = pages  # whether a browser can open a service (HTTP/1.1, not gRPC/h2c)
        self.port = 0  # the edge's own, once bound

    def resolve(self, host: str) -> Preview | PreviewMiss | None:
        return resolve(host, self.names(), self.ports)

    def links(self) -> list[tuple[str, str]]:
        services = [s for s in sorted(self.ports) if self.pages(s)]
        links = [(f"{name} → {service}", preview_url(name, service, self.port))
                 for name in sorted(self.names()) for service in services]
        return links[:MAX_LINKS]

    def baseline_links(self) -> list[tuple[str, str]]:
        return [(service, f"http://{service}.localhost:{self.port}/")
                for service in sorted(self.ports) if self.pages(service)]


def _answer(status: int, code: str, page: bytes, message: str, html: bool,
            close: bool) -> bytes:
    if not html:
        return error_response(status, code, message, close=close)
    reason = {200: b"OK", 404: b"Not Found"}.get(status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason),
        b"content-type: text/html; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(page),
        b"cache-control: no-store\r\n",  # a sandbox created later must not meet a cached 404
        b"laneway-error: " + code.encode() + b"\r\n" if status >= 400 else b"",
        b"connection: close\r\n" if close else b"",
        b"\r\n",
    ]
    return b"".join(lines) + page


class EdgeConnection(ClientConnection):
    """A browser's connection to the edge."""

    plain = False  # every request's host picks its preview in `_build`: the parser's path

    def __init__(self, ctx: ServiceContext, edge: Edge) -> None:
        super().__init__(ctx)
        self.edge = edge

    def _build(self, ex: Exchange, method: bytes, url: bytes, llhttp_upgrade: bool) -> None:
        host = b""
        html = False
        traced = False
        for name, value in self._headers:
            lname = name.lower()
            if lname == b"host" and not host:
                host = value
            elif lname == b"accept" and b"text/html" in value:
                html = True
            elif lname == b"traceparent":
                traced = True
        if url[:1] != b"/":
            try:
                absolute = absolute_target(url)
            except ValueError:
                absolute = None  # the client side answers 400 below
            if absolute is not None:
                host = absolute[0]
        target = self.edge.resolve(host.decode("latin-1"))
        if isinstance(target, Preview):
            port = self.edge.ports.get(target.service)
            if target.key is not None:
                given = [v for n, v in self._headers if n.lower() == b"baggage"]
                merged = with_key(b",".join(given).decode("latin-1"), target.key)
                self._headers = [(n, v) for n, v in self._headers if n.lower() != b"baggage"]
                self._headers.append((b"baggage", merged.encode("latin-1")))
            if not traced:
                # Browsers start no trace: the edge does (as Envoy does for requests it
                # traces), so that every preview request has a path to show. Services that
                # trace continue it; sampled, since someone is looking at it.
                self._headers.append((b"traceparent", b"00-%s-%s-01" % (
                    secrets.token_hex(16).encode(), secrets.token_hex(8).encode())))
        # Framing, limits and the rewritten head come from the router's own client side. The
        # edge's context has no routes, so it picks `ctx.baseline`: set to this request's
        # upstream just before (one thread; the decision is taken within this call).
        upstream = Upstream(self.edge.host, port) if isinstance(target, Preview) and \
            port is not None else None
        self.ctx.baseline = upstream
        super()._build(ex, method, url, llhttp_upgrade)
        self.ctx.baseline = None
        if self._rejection is not None:
            return
        ex.served_by = b""  # the service's router says who served it
        if isinstance(target, Preview) and upstream is not None:
            ex.key = target.key or ""
            return
        ex.upstream = None
        ex.error = ""
        if target is None:
            page = index_page(self.edge.links(), self.edge.baseline_links())
            if html:
                ex.local = _answer(200, "", page, "", True, ex.has_body)
                ex.local_status = 200
                return
            target = PreviewMiss(404, "no_preview", "No preview",
                                 "this host names no preview; open "
                                 "http://<sandbox>--<service>.localhost:"
                                 f"{self.edge.port}/")
        if isinstance(target, Preview):  # a service whose listener is not up (yet)
            target = PreviewMiss(503, "service_not_listening", "Service not listening",
                                 f"service {target.service!r} has no router listener yet; "
                                 "see `laneway status`")
        ex.error = target.message
        ex.local = _answer(target.status, target.code, miss_page(target, self.edge.links()),
                           target.message, html, ex.has_body)
        ex.local_status = target.status

    def _record(self, ex: Exchange, status: int) -> None:
        """No hop: the service's router records this request's."""
