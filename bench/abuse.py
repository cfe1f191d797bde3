"""Group 7: the router under abuse, memory and limits, next to HAProxy measured in the same run.

The cases of tests/integration/test_router_memory.py (their clients and upstream are in
tests/abusers.py), each against a fresh proxy process, so that its peak resident memory (VmHWM)
is that case's: laneway's router (`python -m laneway.router`, one process) and HAProxy
(`nbthread 1`), each alone on core 0, with the same timeouts (2 s: upstream/server, client,
keep-alive, request head; tunnels 3600 s) and the same connection limit where there is one.
The upstream (a Python asyncio server) and the clients run on core 1.

Per case: RSS before (after a warm-up), peak and 2 s after the abusive clients went away (MB),
and what the clients saw. HAProxy answers none of its clients with 503 beyond `maxconn`: it
stops accepting and queues them in the kernel, so its row of the last case differs in kind.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/
from peers import Proc, wait_port
from tests import abusers
from tests.abusers import Figures, Router, Upstream, measure

PROXY_CORE, LOAD_CORE = 0, 1
TIMEOUT = 2.0
FLAGS = ("--upstream-timeout", f"{TIMEOUT:g}", "--client-timeout", f"{TIMEOUT:g}",
         "--keepalive-timeout", f"{TIMEOUT:g}", "--request-head-timeout", f"{TIMEOUT:g}")
SETTLE = 2.0
LIMIT, NOFILE = 160, 512
# HAProxy wants two descriptors per connection under its RLIMIT_NOFILE (20,000 here) and will
# not start otherwise; 5,000 is above what any case opens at once (3,000).
MAXCONN = 5000


@dataclass(frozen=True)
class Case:
    name: str
    abuse: Callable[[int], Awaitable[dict[str, Any]]]
    summary: Callable[[dict[str, Any]], str]
    limited: bool = False  # --max-connections LIMIT (HAProxy: maxconn) under RLIMIT_NOFILE


def _counts(counter: dict[Any, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items(), key=str)) or "-"


CASES = (
    Case("tunnel after 101, the client not reading (3 s)",
         lambda port: abusers.tunnel_reader_stalls(port, 3.0),
         lambda r: f"connection held at the end: {r['held']}"),
    Case("tunnel after 101, the upstream not reading (3 s)",
         lambda port: abusers.tunnel_writer_floods(port, 3.0),
         lambda r: f"the client got {r['status']} and wrote {r['sent_mb']} MB"),
    Case("30 pipelined 10 MiB GETs, never read (held 6 s)",
         lambda port: abusers.pipelined_unread(port, 30, 10, 3 * TIMEOUT),
         lambda r: f"connection still held after 6 s: {r['held']}"),
    Case("slow readers of 10 MiB, then unrelated requests (6 x 8)",
         lambda port: abusers.slow_readers_then_others(port, 6, 10, parallel=8),
         lambda r: f"slow: {_counts(r['slow'])}; unrelated: {_counts(r['others'])}"),
    Case("1,000 slow heads + 2,000 idle keep-alive (7 s)",
         lambda port: abusers.slow_heads_and_idlers(port, 1000, 2000, 3 * TIMEOUT + 1),
         lambda r: f"held at most {r['held_peak']}, 6 s in {r['held_late']}; heads: "
                   f"{_counts(r['heads'])}; idle: {_counts(r['idle'])}"),
    Case("steady upload of 5 s (upstream timeout 2 s)",
         lambda port: abusers.slow_upload(port, 2.5 * TIMEOUT),
         lambda r: f"answered {r['status']} after {r['sent']} of {r['length']} bytes"),
    Case(f"{LIMIT - 16} idle + 400 more, limit {LIMIT}, RLIMIT_NOFILE {NOFILE}",
         lambda port: abusers.beyond_the_limit(port, LIMIT, 400, TIMEOUT + 3),
         lambda r: f"first: {_counts(r['first'])}; the 400 more: {_counts(r['extra'])}; idle "
                   f"closed by the proxy: {r['idle_closed_by_proxy']}/{r['idle_kept']}; "
                   f"a new client then: {r['newcomer']}",
         limited=True),
)


def haproxy(work: Path, port: int, upstream: int, limited: bool) -> Proc:
    """HAProxy with the router's timeouts; `limited`: maxconn LIMIT under RLIMIT_NOFILE."""
    conf = work / f"haproxy-{port}.cfg"
    conf.write_text(f"""
global
  nbthread 1
  maxconn {LIMIT if limited else MAXCONN}
defaults
  mode http
  timeout connect 3s
  timeout client {TIMEOUT:g}s
  timeout server {TIMEOUT:g}s
  timeout http-request {TIMEOUT:g}s
  timeout http-keep-alive {TIMEOUT:g}s
  timeout tunnel 3600s
frontend abuse
  bind 127.0.0.1:{port}
  maxconn {LIMIT if limited else MAXCONN}
  default_backend up
backend up
  server u 127.0.0.1:{upstream}
""")
    argv = ["haproxy", "-f", str(conf)]
    if limited:
        argv = ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--", *argv]
    proc = Proc(argv, PROXY_CORE, "haproxy")
    try:
        wait_port(port)
    except OSError:
        proc.stop()
        raise
    if proc.proc.poll() is not None:
        assert proc.proc.stderr is not None
        raise RuntimeError(f"haproxy exited: {proc.proc.stderr.read().decode(errors='replace')}")
    return proc


async def _one(kind: str, case: Case, upstream: Upstream, work: Path) -> Figures:
    if kind == "laneway":
        flags = FLAGS + (("--max-connections", str(LIMIT)) if case.limited else ())
        router = Router(upstream.port, work / "router.log", flags,
                        nofile=NOFILE if case.limited else None, cpu=PROXY_CORE)
        try:
            return await measure(router.pid, router.port, lambda: case.abuse(router.port),
                                 SETTLE)
        finally:
            router.stop()
    port = abusers.free_port()  # outside the ephemeral range: no self-connect while it starts
    proc = haproxy(work, port, upstream.port, case.limited)
    try:
        return await measure(proc.proc.pid, port, lambda: case.abuse(port), SETTLE)
    finally:
        proc.stop()


async def _run(upstream: Upstream, work: Path) -> dict[str, dict[str, Figures]]:
    results: dict[str, dict[str, Figures]] = {}
    print(f"   {'case':<58} {'proxy':<8} {'before':>7} {'peak':>8} {'after':>8}  "
          f"what the clients saw")
    for number, case in enumerate(CASES, 1):
        results[case.name] = {}
        for kind in ("laneway", "haproxy"):
            try:
                fig = await _one(kind, case, upstream, work)
            except Exception as exc:  # one broken case must not hide the others
                print(f"   {number}. {case.name:<55} {kind:<8} failed: {exc!r}", flush=True)
                continue
            results[case.name][kind] = fig
            label = f"{number}. {case.name}" if kind == "laneway" else ""
            print(f"   {label:<58} {kind:<8} {fig.before:>7.1f} {fig.peak:>8.1f} "
                  f"{fig.after:>8.1f}  {case.summary(fig.result)}; then a normal request: "
                  f"{fig.probe}, connections held: {fig.held_after}", flush=True)
    return results


def main() -> dict[str, dict[str, Figures]]:
    print(f"\n7. router under abuse: memory and limits. RSS in MB of the proxy process before "
          f"the abuse (after a warm-up), at its peak (VmHWM) and {SETTLE:g} s after the abusive "
          f"clients went away; a fresh proxy per case, pinned to core {PROXY_CORE} (laneway 1 "
          f"process, HAProxy 1 thread); timeouts {TIMEOUT:g} s (upstream, client, keep-alive, "
          f"request head); the upstream and the clients on core {LOAD_CORE}. A client's "
          f"status -1: its connection refused or reset; 0: no answer in time")
    work = Path(tempfile.mkdtemp(prefix="laneway-bench-abuse-"))
    abusers.raise_own_fd_limit()
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {LOAD_CORE})
    upstream = Upstream(cpu=LOAD_CORE)
    try:
        return uvloop.run(_run(upstream, work))
    finally:
        upstream.stop()
        os.sched_setaffinity(0, affinity)


if __name__ == "__main__":
    main()
