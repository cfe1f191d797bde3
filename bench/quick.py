"""`make bench-quick`: the router against HAProxy (1 thread) in under a minute, for a developer
about to commit a change to the router: 1k keyed and unkeyed, wrk -t1 -c16, 3 interleaved
rounds of 2 s, each proxy pinned to core 0 and the load on core 1 (as group 1 of `make bench`),
printing throughput, p99, CPU time per request and the ratios to HAProxy measured in the same
run. A bare uvloop + httptools forwarder (`bare_forwarder.py`, no features) runs beside them:
the ceiling of a Python router here, and the CPU per request laneway's own work adds to it.
A regression shows as a ratio below what bench/RESULTS.md records; it is a quick look, not the
judged figure (`make bench` runs longer rounds and more of them). CPU per request is the
steadiest figure on a shared machine: another tenant slows every target's throughput, but
hardly changes the work each request costs.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import peers
from peers import Proc, free_port, origins, start
from router_bench import BAGGAGE, LOAD_CORE, PROXY_CORE, _interleaved

KINDS = ("haproxy", "laneway", "bare")


def main(seconds: int = 2, repeats: int = 3) -> None:
    started = time.monotonic()
    peers.ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="laneway-bench-quick-"))
    servers, base_port, fork_port = origins(work, LOAD_CORE)
    proxies: dict[str, Proc] = {}
    ports: dict[str, int] = {}
    try:
        for kind in KINDS:
            ports[kind] = free_port()
            proxies[kind] = start(kind, work, ports[kind], base_port, fork_port, PROXY_CORE)
        pids = {kind: proc.proc.pid for kind, proc in proxies.items()}
        print(f"bench-quick: wrk -t1 -c16 -d{seconds}s, keep-alive, 1 KiB, median of {repeats} "
              f"interleaved rounds; proxy on core {PROXY_CORE} (HAProxy nbthread 1; laneway 1 "
              f"process, hop records and laneway-served-by on; bare: a uvloop + httptools "
              f"forwarder with no features), wrk and origins on core {LOAD_CORE}; the "
              f"router's scans {peers.scans_in_use()}")
        print(f"   {'traffic':<8} {'target':<8} {'req/s':>7} {'ratio':>6} {'p99 ms':>7} "
              f"{'p99 ratio':>9} {'CPU us/req':>10}")
        for keyed in (True, False):
            medians = _interleaved(ports, "/1k", BAGGAGE if keyed else {}, seconds, repeats,
                                   pids)
            hap = medians["haproxy"]
            for kind in KINDS:
                m = medians[kind]
                print(f"   {'keyed' if keyed else 'unkeyed':<8} {kind:<8} {m['rps']:>7.0f} "
                      f"{m['rps'] / hap['rps']:>5.2f}x {m['p99']:>7.2f} "
                      f"{m['p99'] / hap['p99']:>8.2f}x {m['cpu_us']:>10.1f}")
    finally:
        for proc in [*proxies.values(), *servers]:
            proc.stop()
    print(f"   (goals, issue 17, laneway against haproxy: throughput >= 0.80x, p99 <= 2.00x; "
          f"took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
