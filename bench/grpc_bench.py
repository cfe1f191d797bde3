"""Group 8: gRPC through the router, against direct and HAProxy in h2c mode, in the same run.

The upstream is a grpcio server (Python, raw-bytes codec through a generic handler, no codegen)
with three methods: `bench.Bench/Unary` answers `ok:` + the request, `bench.Bench/Stream` answers
a request `N` with N messages (message i: i as 4 bytes big-endian, then padding to PAYLOAD
bytes), `bench.Bench/Echo` (bidi) answers every message with itself. Three paths, measured in
interleaved rounds (every path once per round), medians: direct to the upstream; laneway's
router (one process, `Router.listen(..., protocol="grpc")`, hop recording on as in group 1);
HAProxy (`nbthread 1`, `mode http`, `bind ... proto h2`, `server ... proto h2`). Every call
carries `baggage: sentry-trace=1, laneway-key=bench0000000;p=1` and both proxies apply the rule
of group 1 (the fork is the same upstream here, so one upstream process serves every path).

The proxy alone on core 0; the upstream and the load generator on core 1. Unary and server
streaming are driven by h2load (nghttp2-client, h2c with prior knowledge, one thread), its
responses checked for 2xx and for the bytes a correct answer carries; bidi ping-pong by a grpcio
(aio) client. Before any timing, a grpcio client checks once per path that every method returns
OK and the right answer: a path that fails is reported and left out. Without h2load, grpcio's
closed-loop client drives the unary and streaming rows too.

`python bench/grpc_bench.py` runs the group alone; `server`, `router` and `client` are the
subcommands the group starts in its processes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

PROXY_CORE, LOAD_CORE = 0, 1
from peers import KEY  # noqa: E402  (the rule both proxies apply, as in group 1)

BAGGAGE = f"sentry-trace=1, laneway-key={KEY};p=1"
PAYLOAD = 100  # bytes of every request and response message (before the 5-byte prefix)
STREAM_N = 100  # messages per server stream
CONNECTIONS, STREAMS = 8, 8  # h2load -c / -m: connections, concurrent streams per connection
BIDI_STREAMS = 4  # concurrent bidi streams over 2 channels, one message in flight on each
WORKERS = 6  # the upstream's threads
UNARY, STREAM, ECHO = "/bench.Bench/Unary", "/bench.Bench/Stream", "/bench.Bench/Echo"
REQUEST = b"r" * PAYLOAD


def _quantile(ordered: list[Any], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else 0.0


def _frame(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


def _stream_message(i: int) -> bytes:
    return i.to_bytes(4, "big") + b"s" * (PAYLOAD - 4)


# --- the upstream -------------------------------------------------------------------------

def serve(port: int) -> None:
    """grpcio's threaded server, WORKERS threads: on one core shared with h2load it sustained
    1.5-2x the calls/s of grpcio's asyncio server, and more than with more threads (the GIL).
    A bidi stream holds a thread for its life, hence BIDI_STREAMS < WORKERS."""
    from concurrent import futures

    import grpc

    messages = [_stream_message(i) for i in range(10_000)]

    def unary(request: bytes, context: Any) -> bytes:
        return b"ok:" + request

    def stream(request: bytes, context: Any) -> Any:
        yield from messages[:int(request)]

    def echo(requests: Any, context: Any) -> Any:
        yield from requests

    handler = grpc.method_handlers_generic_handler("bench.Bench", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


# --- the router ---------------------------------------------------------------------------

def route(port: int, upstream: int) -> None:
    """laneway's router on its own, as bench/router_server.py starts it, the listener's
    service reached over gRPC (HTTP/2 with prior knowledge)."""
    import asyncio
    import signal

    import uvloop

    from laneway.core.routes import ForkRoute, RouteTable, Upstream
    from laneway.dataplane.main import HopBuffer
    from laneway.router import Router, RouterSettings

    async def main() -> None:
        hops = HopBuffer(100_000)  # the data plane's own buffer
        router = Router(RouterSettings(), hop_sink=hops.add)
        await router.listen("svc", port, protocol="grpc")
        table = RouteTable(version=1, baseline={"svc": Upstream("127.0.0.1", upstream)})
        table.forks["svc"] = {KEY: ForkRoute("svc", "bench", Upstream("127.0.0.1", upstream),
                                             True, fork="svc@bench#1")}
        router.apply(table)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await router.close()

    uvloop.run(main())


# --- the grpcio client: the check, bidi ping-pong, and the fallback generator ---------------

def _channels(port: int, count: int) -> list[Any]:
    import grpc
    # A local subchannel pool: each channel its own connection, as h2load's clients are.
    return [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


async def _check(port: int) -> str:
    """'' when every method returns OK and the right answer through `port`, else what went
    wrong."""
    import asyncio

    import grpc
    metadata = (("baggage", BAGGAGE),)
    [channel] = _channels(port, 1)
    try:
        unary = channel.unary_unary(UNARY)
        answer = await unary(REQUEST, metadata=metadata, timeout=5)
        if answer != b"ok:" + REQUEST:
            return f"Unary answered {answer[:40]!r}"
        call = channel.unary_stream(STREAM)(str(STREAM_N).encode(), metadata=metadata, timeout=5)
        got = [m async for m in call]
        if got != [_stream_message(i) for i in range(STREAM_N)]:
            return f"Stream answered {len(got)} messages, not the {STREAM_N} expected"
        if await call.code() != grpc.StatusCode.OK:
            return f"Stream ended with {await call.code()}"
        echo = channel.stream_stream(ECHO)(metadata=metadata, timeout=5)
        for i in range(3):
            await echo.write(_stream_message(i))
            if await echo.read() != _stream_message(i):
                return "Echo answered something else"
        await echo.done_writing()
        if await echo.read() != grpc.aio.EOF or await echo.code() != grpc.StatusCode.OK:
            return f"Echo ended with {await echo.code()}"
        # Calls at once on the one connection: the proxy multiplexes them.
        answers = await asyncio.gather(*(unary(str(i).encode(), metadata=metadata, timeout=5)
                                         for i in range(50)))
        if answers != [b"ok:" + str(i).encode() for i in range(50)]:
            return "50 concurrent Unary calls answered something else"
        return ""
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    except Exception as exc:  # whatever broke, it is this path's failure
        return f"{type(exc).__name__}: {exc}"
    finally:
        await channel.close()


async def _load(port: int, mode: str, seconds: float, connections: int,
                concurrency: int) -> dict[str, float]:
    """Closed loop for `seconds`: `concurrency` calls in flight over `connections` channels.
    unary: calls/s; stream: messages/s of STREAM_N-message streams; bidi: messages/s, each
    stream one message in flight (ping-pong). Latency per call (unary, stream) or per round
    trip (bidi)."""
    import asyncio

    import grpc
    metadata = (("baggage", BAGGAGE),)
    channels = _channels(port, connections)
    latencies: list[float] = []
    counts = {"messages": 0, "failed": 0}
    deadline = 0.0

    async def worker(channel: Any) -> None:
        clock = time.perf_counter
        if mode == "bidi":
            call = channel.stream_stream(ECHO)(metadata=metadata)
            while clock() < deadline:
                start = clock()
                await call.write(REQUEST)
                if await call.read() != REQUEST:
                    counts["failed"] += 1
                    break
                latencies.append(clock() - start)
                counts["messages"] += 1
            await call.done_writing()
            await call.read()
            return
        unary = channel.unary_unary(UNARY)
        streamed = channel.unary_stream(STREAM)
        request = str(STREAM_N).encode()
        while clock() < deadline:
            start = clock()
            try:
                if mode == "unary":
                    await unary(REQUEST, metadata=metadata)
                    counts["messages"] += 1
                else:
                    async for _ in streamed(request, metadata=metadata):
                        counts["messages"] += 1
            except grpc.aio.AioRpcError:
                counts["failed"] += 1
                continue
            latencies.append(clock() - start)

    for channel in channels:  # connect before the clock starts
        await channel.channel_ready()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(worker(channels[i % connections]) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    latencies.sort()
    return {"rate": counts["messages"] / elapsed, "p50": _quantile(latencies, 0.5) * 1000,
            "p99": _quantile(latencies, 0.99) * 1000,
            "errors": float(counts["failed"])}


def client(args: argparse.Namespace) -> None:
    import asyncio
    if args.mode == "check":
        print(json.dumps({"error": asyncio.run(_check(args.port))}))
    else:
        print(json.dumps(asyncio.run(_load(args.port, args.mode, args.seconds,
                                           args.connections, args.concurrency))))


# --- the group -----------------------------------------------------------------------------

def _self(*argv: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *argv]


def _run_client(port: int, mode: str, **kw: Any) -> dict[str, Any]:
    argv = ["taskset", "-c", str(LOAD_CORE), *_self("client", "--port", str(port), mode)]
    for name, value in kw.items():
        argv += [f"--{name}", str(value)]
    timeout = float(kw.get("seconds", 0)) + 30
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"the grpcio client did not finish within {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["the grpcio client failed"])[-1]}
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _h2load(port: int, path: str, body: Path, seconds: float, expect: int,
            work: Path) -> dict[str, float]:
    """h2load (one thread) on LOAD_CORE for `seconds`; calls/s, p50/p99 from its per-request
    log, and `errors`: calls without a 2xx plus calls whose answer lacked the `expect` bytes of
    DATA a correct one carries (gRPC reports failures in trailers, which h2load ignores)."""
    log = work / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to it
    argv = ["taskset", "-c", str(LOAD_CORE), "h2load", "-t1", f"-c{CONNECTIONS}",
            f"-m{STREAMS}", "-D", f"{round(seconds * 1000)}ms", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", f"baggage: {BAGGAGE}", "--log-file", str(log),
            f"http://127.0.0.1:{port}{path}"]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    out = ran.stdout + ran.stderr

    def num(pattern: str) -> float:
        match = re.search(pattern, out)
        if not match:
            raise RuntimeError(f"h2load: no {pattern!r} in its output:\n{out}")
        return float(match.group(1))

    rps = num(r"finished in [\d.]+\w+, ([\d.]+) req/s")
    done = num(r"requests: \d+ total, \d+ started, (\d+) done")
    succeeded = num(r"(\d+) succeeded")
    failed = sum(num(rf"(\d+) {what}") for what in ("failed", "errored", "timeout"))
    ok = num(r"status codes: (\d+) 2xx")  # counted at the response's head: streams in flight too
    data = num(r"traffic: .*headers .*?, \S+ \((\d+)\) data")  # in flight at the end too
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines()
                       if line.count("\t") >= 2)
    short = max(0.0, succeeded - data / expect)  # answers without their messages
    return {"rate": rps, "p50": _quantile(durations, 0.5) / 1000,
            "p99": _quantile(durations, 0.99) / 1000,
            "errors": failed + max(0.0, done - ok) + round(short)}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(seconds: float = 2.5, repeats: int = 3) -> dict[str, Any]:
    from peers import Proc, free_port, haproxy, wait_port
    work = Path(tempfile.mkdtemp(prefix="laneway-grpc-bench-"))
    h2load = shutil.which("h2load") is not None
    upstream_port = free_port()
    procs: dict[str, Proc] = {"upstream": Proc(_self("server", "--port", str(upstream_port)),
                                               LOAD_CORE, "upstream")}
    ports = {"direct": upstream_port, "laneway": free_port(), "haproxy": free_port()}
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}  # path -> why it is left out
    try:
        procs["laneway"] = Proc(_self("router", "--port", str(ports["laneway"]), "--upstream",
                                      str(upstream_port)), PROXY_CORE, "laneway")
        procs["haproxy"] = haproxy(work, ports["haproxy"], upstream_port, upstream_port,
                                   PROXY_CORE, h2=True)
        for name, port in ports.items():
            try:
                wait_port(port)
            except OSError:
                popen = procs.get(name, procs["upstream"]).proc
                why = popen.stderr.read().decode(errors="replace").strip().splitlines()[-1:] if (
                    popen.poll() is not None and popen.stderr) else []
                failed[name] = f"not listening after 15 s{': ' + why[0] if why else ''}"
        gen = (f"h2load -t1 -c{CONNECTIONS} -m{STREAMS} (h2c, prior knowledge)" if h2load else
               f"grpcio aio closed loop, {CONNECTIONS} channels x {STREAMS} calls in flight "
               f"(h2load not installed)")
        print(f"\n8. gRPC through the proxies: unary and server-streaming by {gen}, bidi "
              f"ping-pong by grpcio (2 channels x {BIDI_STREAMS // 2} streams, one message in "
              f"flight each); {PAYLOAD}-byte messages, {STREAM_N} per server stream; every call "
              f"keyed (baggage rule of group 1); median of {repeats} interleaved rounds of "
              f"{seconds:g} s; the proxy pinned to core {PROXY_CORE} (laneway 1 process, "
              f"HAProxy 1 thread, h2c both sides), the upstream (grpcio, threaded, {WORKERS} "
              f"threads) and the load generator on core {LOAD_CORE}")
        if not h2load:
            print("   h2load (Debian nghttp2-client) is not installed: the grpcio client drives "
                  "every row, and it, not the proxies, may be the limit")
        for name, port in ports.items():
            error = failed.get(name) or _run_client(port, "check").get("error", "")
            if error:
                failed[name] = error
                print(f"   {name}: FAILED the correctness check (grpcio client): {error}; "
                      f"left out")
        if "direct" in failed:
            print("   the upstream itself fails: no figures")
            return results
        paths = {name: port for name, port in ports.items() if name not in failed}
        body = work / "unary.bin"
        body.write_bytes(_frame(REQUEST))
        stream_body = work / "stream.bin"
        stream_body.write_bytes(_frame(str(STREAM_N).encode()))
        unary_expect = 5 + 3 + PAYLOAD
        stream_expect = STREAM_N * (5 + PAYLOAD)

        def measure(case: str, port: int, secs: float) -> dict[str, Any]:
            if case == "bidi":
                return _run_client(port, "bidi", seconds=secs, connections=2,
                                   concurrency=BIDI_STREAMS)
            if h2load and case == "unary":
                return _h2load(port, UNARY, body, secs, unary_expect, work)
            if h2load:
                row = _h2load(port, STREAM, stream_body, secs, stream_expect, work)
                return {**row, "rate": row["rate"] * STREAM_N}
            return _run_client(port, case, seconds=secs, connections=CONNECTIONS,
                               concurrency=CONNECTIONS * STREAMS)

        cases = {"unary": "calls/s", "stream": "msgs/s", "bidi": "msgs/s"}
        pids = {name: procs[name].proc.pid for name in paths if name in procs}
        upstream_pid = procs["upstream"].proc.pid
        print(f"   {'case':<7} {'path':<8} {'rate':>9} {'unit':<8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'proxy CPU':>9} {'upstr. CPU':>10} {'vs direct':>9} {'vs haproxy':>10}")
        for case, unit in cases.items():
            for port in paths.values():
                measure(case, port, 0.5)  # warm-up
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
            for _ in range(repeats):
                for name, port in paths.items():
                    before = _cpu_seconds(pids[name]) if name in pids else 0.0
                    upstream_before = _cpu_seconds(upstream_pid)
                    try:
                        row = measure(case, port, seconds)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        row = {"error": str(exc).splitlines()[0]}
                    if "error" in row:
                        print(f"   {case} via {name}: the generator failed: {row['error']}")
                        row = {"rate": 0.0, "p50": 0.0, "p99": 0.0, "errors": 1.0}
                    count = max(1.0, row["rate"] * seconds)
                    upstream_s = _cpu_seconds(upstream_pid) - upstream_before
                    row["upstream_us"] = upstream_s * 1e6 / count
                    if name in pids:
                        row["cpu_us"] = (_cpu_seconds(pids[name]) - before) * 1e6 / count
                    runs[name].append(row)
            medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                       for name, rs in runs.items()}
            results[case] = medians
            direct = medians["direct"]["rate"] or 1.0
            hap = medians.get("haproxy", {}).get("rate", 0.0)
            for name, row in medians.items():
                cpu = f"{row['cpu_us']:6.1f} us" if "cpu_us" in row else f"{'-':>9}"
                errors = sum(r["errors"] for r in runs[name])
                print(f"   {case:<7} {name:<8} {row['rate']:>9.0f} {unit:<8} {row['p50']:>7.2f} "
                      f"{row['p99']:>7.2f} {cpu} {row['upstream_us']:7.1f} us "
                      f"{row['rate'] / direct:>8.2f}x "
                      + (f"{row['rate'] / hap:>9.2f}x" if hap else f"{'-':>10}")
                      + (f"  ({errors:.0f} errors!)" if errors else ""))
        print("   latency: per call (unary), per whole stream of messages (stream), per round "
              "trip (bidi); proxy CPU, upstr. CPU: the proxy's, the upstream's CPU time per call "
              "(unary) or message (stream, bidi). The upstream, on one core with the load "
              "generator, caps every path: what a proxy could carry on its own core is 1e6 / its "
              "CPU figure")
        if "laneway" in paths and "haproxy" in paths:
            lane, hap_ = ({case: results[case][name] for case in cases}
                          for name in ("laneway", "haproxy"))
            by_rate = ", ".join(f"{case} {lane[case]['rate'] / hap_[case]['rate']:.2f}x"
                                for case in cases if hap_[case]["rate"])
            by_cpu = ", ".join(f"{case} {hap_[case]['cpu_us'] / lane[case]['cpu_us']:.2f}x"
                               for case in cases if lane[case]["cpu_us"])
            print(f"   laneway / HAProxy (h2c, one core each): by rate {by_rate}; by proxy CPU "
                  f"per call or message (throughput-equivalent) {by_cpu}")
    finally:
        for proc in procs.values():
            proc.stop()
    return results

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("server")
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("router")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", type=int, required=True)
    p = sub.add_parser("client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("mode", choices=("check", "unary", "stream", "bidi"))
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=CONNECTIONS)
    p.add_argument("--concurrency", type=int, default=CONNECTIONS * STREAMS)
    args = parser.parse_args()
    if args.command == "server":
        serve(args.port)
    elif args.command == "router":
        route(args.port, args.upstream)
    elif args.command == "client":
        client(args)
    else:
        main()
