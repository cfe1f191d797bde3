"""`python -m laneway.router --listen SERVICE=PORT[/PROTOCOL] ... --routes URL`: routers outside
the daemon (as the Kubernetes sidecar runs them), fed by a routes feed over HTTP. They keep
serving their last table while the feed is away.

PROTOCOL is how a listener's service is reached (`Router.listen`): `http` (HTTP/1.1, the default,
so `SERVICE=PORT` means what it always did), `h2c` or `grpc` (HTTP/2 with prior knowledge). It
follows the port after `/`, as in `8080/tcp`: `:` already joins a Service to its port name
(`orders.shop:grpc=15081/grpc`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import uvloop

from laneway.core.routes import RouteTable, Upstream
from laneway.core.spec import PROTOCOLS
from laneway.router.feed_http import HttpHopPusher, HttpRoutesFeed
from laneway.router.hops import freeze_startup
from laneway.router.server import Router, RouterError, RouterSettings


def _baseline(value: str) -> tuple[str, Upstream]:
    service, sep, address = value.rpartition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not service or not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected SERVICE=HOST:PORT, e.g. orders=127.0.0.1:8080")
    return service, Upstream(host, int(port))


def _listen(value: str) -> tuple[str, int, str]:
    service, sep, address = value.rpartition("=")
    port, slash, protocol = address.partition("/")
    if not sep or not service or not port.isdigit() or not 0 < int(port) < 65536 or (
            slash and protocol not in PROTOCOLS):
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected SERVICE=PORT or SERVICE=PORT/PROTOCOL with PROTOCOL one of "
            f"{', '.join(PROTOCOLS)}, e.g. orders=15080 or orders=15081/grpc")
    return service, int(port), protocol or "http"


async def main(args: argparse.Namespace) -> int:
    if args.workers > 1:
        return await supervise(args)
    feed = HttpRoutesFeed(args.routes, args.token, args.token_file)
    pusher = HttpHopPusher(args.hops, args.token, args.token_file, router=args.name) \
        if args.hops else None
    limits = {name: value for name, value in vars(args).items()
              if name in _LIMIT_FLAGS and value is not None}
    router = Router(RouterSettings(host=args.host, extra_headers=tuple(args.extra_header),
                                   reuse_port=args.reuse_port, **limits),
                    hop_sink=pusher.add if pusher else None)
    pushing = asyncio.get_running_loop().create_task(pusher.run()) if pusher else None
    if args.baseline:
        router.apply(RouteTable(version=0, baseline=dict(args.baseline)))
    router.follow(feed)
    if args.reuse_port:
        # A worker of several: the others serve the port meanwhile, so this one takes
        # connections only once it has the table (a keyed request must not meet a router
        # that does not know its fork yet), or after 5 s with the feed away.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(router.fed.wait(), 5.0)
    try:
        ports = [(service, await router.listen(service, port, protocol), protocol)
                 for service, port, protocol in args.listen]
    except RouterError as exc:
        print(f"Error: {exc}", file=sys.stderr)  # noqa: T201
        await router.close()
        await feed.aclose()
        await _stop_pushing(pusher, pushing)
        return 1
    # Handlers first: a SIGTERM sent as soon as the lines below are read stops it gracefully.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    freeze_startup()  # what start-up made is not walked by every full collection
    for service, port, protocol in ports:
        over = "" if protocol == "http" else f" ({protocol})"
        print(f"laneway router for {service} on {args.host}:{port}{over}",  # noqa: T201
              flush=True)
    await stop.wait()
    await router.close()  # hands its last hop records to the pusher
    await feed.aclose()
    await _stop_pushing(pusher, pushing)
    return 0


async def supervise(args: argparse.Namespace) -> int:
    """`--workers N`: N router processes on the same ports (SO_REUSEPORT), each a whole router
    (its own routes feed, hop records sent as `NAME-wI`, its share of `--max-connections`), so
    nothing is shared between processes on the request path. A worker that dies is started
    again (after 1 s); SIGTERM stops them all."""
    argv = list(args.argv)
    workers: list[asyncio.subprocess.Process | None] = [None] * args.workers
    share = None if args.max_connections is None else -(-args.max_connections // args.workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def worker_argv(i: int) -> list[str]:
        out = _without(argv, ("--workers", "--name", "--max-connections"))
        out += ["--workers", "1", "--reuse-port", "--name", f"{args.name}-w{i}"]
        if share is not None:
            out += ["--max-connections", str(share)]
        return [sys.executable, "-m", "laneway.router", *out]

    async def keep(i: int) -> None:
        while not stop.is_set():
            proc = await asyncio.create_subprocess_exec(*worker_argv(i))
            workers[i] = proc
            code = await proc.wait()
            if stop.is_set():
                return
            print(f"laneway router worker {i} exited with {code}; starting it again",  # noqa: T201
                  file=sys.stderr, flush=True)
            await asyncio.sleep(1.0)

    tasks = [loop.create_task(keep(i)) for i in range(args.workers)]
    await stop.wait()
    for proc in workers:
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*tasks, return_exceptions=True)
    for proc in workers:
        if proc is not None and proc.returncode is None:
            await proc.wait()
    return 0


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """`argv` less the given flags and their values (`--flag V` or `--flag=V`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in flags:
            skip = True
            continue
        if any(arg.startswith(f + "=") for f in flags):
            continue
        out.append(arg)
    return out


async def _stop_pushing(pusher: HttpHopPusher | None, task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if pusher is not None:
        await pusher.aclose()


parser = argparse.ArgumentParser(prog="python -m laneway.router")
parser.add_argument("--listen", type=_listen, action="append", required=True,
                    metavar="SERVICE=PORT[/PROTOCOL]",
                    help="serve SERVICE on PORT (repeat for several); PROTOCOL is how SERVICE "
                         "is reached: http (HTTP/1.1, the default), h2c or grpc (HTTP/2)")
parser.add_argument("--baseline", type=_baseline, action="append", default=[],
                    metavar="SERVICE=HOST:PORT",
                    help="where SERVICE's baseline is until the routes feed says otherwise, so "
                         "unkeyed traffic flows before the first table arrives (repeatable)")
parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
parser.add_argument("--extra-header", action="append", default=[], metavar="NAME",
                    help="a header whose value is a routing key too (repeatable)")
# Timeouts and limits (RouterSettings): unset, each keeps the router's default.
_LIMITS: tuple[tuple[str, type, str], ...] = (
    ("--connect-timeout", float, "seconds to open an upstream connection"),
    ("--upstream-timeout", float, "seconds of upstream inactivity (either direction)"),
    ("--request-head-timeout", float, "seconds from a request's first byte to its head's end"),
    ("--keepalive-timeout", float, "seconds an idle keep-alive connection is kept"),
    ("--client-timeout", float, "seconds of client inactivity while the router waits for it "
                                "(its request body, or it reading the response)"),
    ("--tunnel-timeout", float, "seconds a tunnel after 101 may be idle both ways"),
    ("--max-connections", int, "client connections per listener; beyond, 503"),
    ("--max-header-bytes", int, "the largest request header section"),
    ("--max-response-header-bytes", int, "the largest response header section (else 502)"),
)
for _flag, _type, _help in _LIMITS:
    parser.add_argument(_flag, type=_type, default=None, help=_help)
_LIMIT_FLAGS = frozenset(_flag[2:].replace("-", "_") for _flag, _, _ in _LIMITS)
parser.add_argument("--routes", default=os.environ.get("LANEWAY_ROUTES_URL", ""),
                    help="the routes feed URL (default: $LANEWAY_ROUTES_URL)")
parser.add_argument("--token", default=os.environ.get("LANEWAY_ROUTES_TOKEN", ""),
                    help="a bearer token for it (default: $LANEWAY_ROUTES_TOKEN)")
parser.add_argument("--hops", default=os.environ.get("LANEWAY_HOPS_URL", ""),
                    help="send hop records to this URL in batches (the operator's /v1/hops; "
                         "default: $LANEWAY_HOPS_URL; none: not recorded)")
parser.add_argument("--name", default=os.environ.get("HOSTNAME") or socket.gethostname(),
                    help="this router's name in the operator's status (default: the pod's)")
parser.add_argument("--workers", type=int, default=int(os.environ.get(
    "LANEWAY_ROUTER_WORKERS", "1")), help="router processes on the same ports "
    "(SO_REUSEPORT), one per core to give it; each follows the feed and sends its hops itself "
    "(default: $LANEWAY_ROUTER_WORKERS or 1)")
parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
parser.add_argument("--token-file", type=Path, default=None,
                    help="read the bearer token from this file before every request "
                         "(a projected ServiceAccount token in Kubernetes)")


def run(argv: list[str] | None = None) -> int:
    arguments = parser.parse_args(argv)
    arguments.argv = list(sys.argv[1:] if argv is None else argv)  # for --workers' children
    if not arguments.routes:
        parser.error("--routes (or LANEWAY_ROUTES_URL) is required")
    if arguments.token_file is not None and not arguments.token_file.is_file():
        parser.error(f"--token-file {arguments.token_file}: no such file")
    if arguments.workers < 1 or arguments.workers > 256:
        parser.error(f"--workers {arguments.workers}: must be between 1 and 256")
    if arguments.workers > 1 and any(port == 0 for _, port, _ in arguments.listen):
        parser.error("--workers: every --listen needs a port of its own (not 0): the workers "
                     "share it")
    return uvloop.run(main(arguments))


# Importable without running (tests read `parser`); `python -m laneway.router` runs it.
if __name__ == "__main__":
    sys.exit(run())
