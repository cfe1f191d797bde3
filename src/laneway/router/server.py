"""The router: listeners per service, the routing table they share, and the feed that updates it.

The daemon creates one `Router`, calls `listen(service, port)` for each service of the baseline and
`follow(feed)` once. Everything a listener needs per request lives in its `ServiceContext`, whose
`routes` dict is the table's own dict for that service, so an update is visible at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
from dataclasses import dataclass

from laneway.core.feed import FeedUpdate, RoutesFeed
from laneway.core.routes import RouteTable, apply_changes
from laneway.router.callers import CallerResolver
from laneway.router.client import ClientConnection, ServiceContext
from laneway.router.edge import EDGE, Edge, EdgeConnection
from laneway.router.h2client import H2ClientConnection
from laneway.router.h2upstream import H2Pool
from laneway.router.hops import HopRecorder, HopSink
from laneway.router.limits import ConnectionBudget
from laneway.router.pool import UpstreamPool
from laneway.router.timeouts import Clock, Served, Sweeper, sweep_interval
from laneway.router.upstream import UpstreamConnection

__all__ = ["Router", "RouterError", "RouterSettings"]

log = logging.getLogger(__name__)


class RouterError(Exception):
    """A router problem the user can fix (a port already taken)."""


@dataclass(frozen=True, slots=True)
class RouterSettings:
    host: str = "127.0.0.1"
    extra_headers: tuple[str, ...] = ()
    connect_timeout: float = 3.0
    # Upstream inactivity: progress in either direction (request body sent, response bytes
    # received) resets it. 504 before the response began, a closed connection after.
    upstream_timeout: float = 60.0
    # From the first byte of a request (or the connection's accept) to the end of its head:
    # nginx's client_header_timeout, HAProxy's `timeout http-request`. 408, then close.
    request_head_timeout: float = 60.0
    # An idle keep-alive connection (no request in progress) is closed after this: nginx 75 s.
    keepalive_timeout: float = 75.0
    # The client's inactivity while the router waits for it: body bytes of its request, or
    # reading the response (nginx's client_body_timeout and send_timeout, HAProxy's `client`).
    client_timeout: float = 60.0
    # A tunnel after `101` (WebSocket) idle in both directions for this long is closed.
    tunnel_timeout: float = 3600.0
    max_connections: int = 10_000  # per listener; beyond it a clear 503 and close
    max_header_bytes: int = 65536  # request header section
    max_response_header_bytes: int = 65536  # beyond it the response is a 502
    hop_capacity: int = 100_000
    capture_services: tuple[str, ...] = ()  # services whose exchanges are captured; "*": all
    capture_rate: float = 1.0
    capture_body_bytes: int = 65536
    # Several router processes on the same ports (SO_REUSEPORT: the kernel spreads the
    # connections across them); `python -m laneway.router --workers N` sets it.
    reuse_port: bool = False


class Router:
    def __init__(self, settings: RouterSettings, hop_sink: HopSink | None = None) -> None:
        self.settings = settings
        self.table = RouteTable()
        self.fed = asyncio.Event()  # set once the routes feed's first table is applied
        self.recorder = HopRecorder(hop_sink, settings.hop_capacity)
        self.pool: UpstreamPool[UpstreamConnection] = UpstreamPool()
        self.h2pool = H2Pool()
        self.callers = CallerResolver()  # which process connects (identities from the data plane)
        self.pool.also_busy = self.h2pool.busy  # a drain waits for HTTP/2 streams too
        self.pool.also_drained = self.h2pool.close_idle
        self.clock = Clock()
        self.budget = ConnectionBudget()
        self.sweeper = Sweeper(self.clock, sweep_interval(
            settings.upstream_timeout, settings.request_head_timeout,
            settings.keepalive_timeout, settings.client_timeout, settings.tunnel_timeout,
        ), self._client_connections)
        self.contexts: dict[str, ServiceContext] = {}
        self.ports: dict[str, int] = {}
        self.edge: Edge | None = None  # the preview edge, once `listen_edge` bound it
        self._edge_ctx: ServiceContext | None = None
        self._edge_server: asyncio.Server | None = None
        self._servers: list[asyncio.Server] = []
        self._by_service: dict[str, asyncio.Server] = {}
        self._follow_task: asyncio.Task[None] | None = None
        self.updated = asyncio.Event()  # set whenever a feed update is applied (tests wait on it)

    def context(self, service: str, protocol: str = "http") -> ServiceContext:
        ctx = self.contexts.get(service)
        if ctx is not None:
            ctx.protocol = protocol
        if ctx is None:
            ctx = self._new_context(service, protocol)
            captured = "*" in self.settings.capture_services or \
                service in self.settings.capture_services
            ctx.capture_rate = self.settings.capture_rate if captured else 0.0
            ctx.capture_body_bytes = self.settings.capture_body_bytes
            ctx.h2_factory = self._h2_connection
            ctx.h2pool = self.h2pool
            ctx.callers = self.callers
            self.contexts[service] = ctx
            self._bind(ctx)
        return ctx

    def _new_context(self, service: str, protocol: str) -> ServiceContext:
        return ServiceContext(
            service, self.recorder, self.pool, clock=self.clock, budget=self.budget,
            extra_headers=frozenset(h.lower().encode() for h in self.settings.extra_headers),
            connect_timeout=self.settings.connect_timeout,
            upstream_timeout=self.settings.upstream_timeout,
            request_head_timeout=self.settings.request_head_timeout,
            keepalive_timeout=self.settings.keepalive_timeout,
            client_timeout=self.settings.client_timeout,
            tunnel_timeout=self.settings.tunnel_timeout,
            max_connections=self.settings.max_connections,
            max_header_bytes=self.settings.max_header_bytes,
            max_response_header_bytes=self.settings.max_response_header_bytes,
            protocol=protocol,
        )

    async def listen(self, service: str, port: int, protocol: str = "http") -> int:
        """Serve `service` on `port` (0: any free port); returns the bound port.

        `protocol` is how the router reaches the service's processes: "http" (HTTP/1.1, and
        HTTP/2 for gRPC calls), "h2c" or "grpc" (HTTP/2 with prior knowledge for every request).
        Clients may speak HTTP/1.1 or HTTP/2 (h2c) to the listener whatever it is."""
        ctx = self.context(service, protocol)
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: ClientConnection(ctx), self.settings.host, port, backlog=1024,
                reuse_address=True, reuse_port=self.settings.reuse_port or None,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RouterError(
                    f"port {port} of service {service!r} is already in use on "
                    f"{self.settings.host}; stop what holds it or change services.{service}.port"
                ) from exc
            raise RouterError(f"cannot listen on {self.settings.host}:{port} for service "
                              f"{service!r}: {exc.strerror or exc}") from exc
        self._servers.append(server)
        self._by_service[service] = server
        self.sweeper.start()
        bound = int(server.sockets[0].getsockname()[1])
        self.ports[service] = bound
        return bound

    async def listen_edge(self, port: int, *, fallback: bool = False) -> int:
        """Serve the preview edge on `port` (`router/edge.py`); with `fallback`, a port that
        is taken gives way to any free one (the default port, which another project on this
        machine may hold). Returns the bound port; a second call moves the edge."""
        await self.unlisten_edge()
        if self._edge_ctx is None:
            self._edge_ctx = self._new_context(EDGE, "http")
        ctx = self._edge_ctx
        edge = Edge(self.settings.host, lambda: self.table.names, self.ports,
                    lambda service: service not in self.contexts or
                    self.contexts[service].protocol == "http")
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(lambda: EdgeConnection(ctx, edge),
                                              self.settings.host, port, backlog=1024,
                                              reuse_address=True)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and fallback and port:
                return await self.listen_edge(0)
            raise RouterError(
                f"cannot serve previews on {self.settings.host}:{port}: "
                f"{exc.strerror or exc}; choose another preview.port in laneway.yaml"
            ) from exc
        edge.port = int(server.sockets[0].getsockname()[1])
        self.edge = edge
        self._edge_server = server
        self._servers.append(server)
        self.sweeper.start()
        for service_ctx in self.contexts.values():
            self._bind(service_ctx)
        return edge.port

    async def unlisten_edge(self) -> None:
        server, self._edge_server, self.edge = self._edge_server, None, None
        for ctx in self.contexts.values():
            ctx.preview_port = 0
        if server is not None:
            server.close()
            self._servers.remove(server)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def unlisten(self, service: str) -> None:
        """Stop accepting connections for `service` (a service removed from the baseline)."""
        server = self._by_service.pop(service, None)
        self.ports.pop(service, None)
        if server is not None:
            server.close()
            self._servers.remove(server)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    def _h2_connection(self, ctx: ServiceContext, transport: asyncio.Transport) \
            -> H2ClientConnection:
        return H2ClientConnection(ctx, self.h2pool, transport)

    def _client_connections(self) -> list[Served]:
        conns = [conn for ctx in self.contexts.values() for conn in ctx.connections]
        if self._edge_ctx is not None:
            conns.extend(self._edge_ctx.connections)
        return conns

    def apply(self, update: FeedUpdate) -> None:
        if isinstance(update, RouteTable):
            self.table = update
        else:
            for changes in update:
                apply_changes(self.table, changes)
        self.callers.by_address = self.table.callers
        for ctx in self.contexts.values():
            self._bind(ctx)
        # The table is long-lived: move it out of the collector's way, so that collections
        # triggered by per-request garbage do not scan every route (a cost that would grow
        # with the number of sandboxes).
        gc.freeze()
        self.updated.set()
        self.updated = asyncio.Event()

    def _bind(self, ctx: ServiceContext) -> None:
        ctx.routes = self.table.forks.setdefault(ctx.name, {})
        ctx.baseline = self.table.baseline.get(ctx.name)
        ctx.captured = self.table.captured
        ctx.names = self.table.names
        ctx.preview_port = self.edge.port if self.edge is not None else 0

    def follow(self, feed: RoutesFeed) -> None:
        """Keep the table current from `feed` until `close()`."""
        self._follow_task = asyncio.get_running_loop().create_task(
            self._follow(feed), name="laneway-router-feed"
        )

    async def _follow(self, feed: RoutesFeed) -> None:
        since: int | None = None
        while True:
            try:
                update = await feed.next_update(since, timeout=30.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The control plane is away: keep serving the last table, try again shortly.
                log.warning("routes feed failed; serving table v%d", self.table.version,
                            exc_info=True)
                await asyncio.sleep(1.0)
                continue
            if update is None:
                continue
            try:
                self.apply(update)
            except ValueError:
                since = None  # out of step: ask for a snapshot
                continue
            self.fed.set()
            since = self.table.version

    async def close(self) -> None:
        """Stop accepting, close connections, flush hop records."""
        self.sweeper.stop()
        for server in self._servers:
            server.close()
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        contexts = list(self.contexts.values())
        if self._edge_ctx is not None:
            contexts.append(self._edge_ctx)
        for ctx in contexts:
            for conn in list(ctx.connections):
                conn.close()
            for task in list(ctx.connect_tasks):
                task.cancel()
            if ctx.connect_tasks:
                await asyncio.gather(*ctx.connect_tasks, return_exceptions=True)
        self.pool.close_all()
        self.h2pool.close_all()
        self.callers.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()
        self.recorder.close()
