"""`make bench-quick`: the router against HAProxy (1 thread) in under a minute, for a developer
about to commit a change to the router: 1k keyed and unkeyed, wrk -t1 -c16, 3 interleaved
rounds of 2 s, each proxy pinned to core 0 and the load on core 1 (as group 1 of `make bench`),
printing throughput, p99 and the ratios to HAProxy measured in the same run. A regression shows
as a ratio below what bench/RESULTS.md records; it is a quick look, not the judged figure
(`make bench` runs longer rounds and more of them).
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


def main(seconds: int = 2, repeats: int = 3) -> None:
    started = time.monotonic()
    peers.ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="laneway-bench-quick-"))
    servers, base_port, fork_port = origins(work, LOAD_CORE)
    proxies: dict[str, Proc] = {}
    ports: dict[str, int] = {}
    try:
        for kind in ("haproxy", "laneway"):
            ports[kind] = free_port()
            proxies[kind] = start(kind, work, ports[kind], base_port, fork_port, PROXY_CORE)
        print(f"bench-quick: wrk -t1 -c16 -d{seconds}s, keep-alive, 1 KiB, median of {repeats} "
              f"interleaved rounds; proxy on core {PROXY_CORE} (HAProxy nbthread 1, laneway 1 "
              f"process, hop records and laneway-served-by on), wrk and origins on core "
              f"{LOAD_CORE}")
        print(f"   {'traffic':<8} {'haproxy req/s':>14} {'laneway req/s':>14} {'ratio':>6} "
              f"{'haproxy p99':>12} {'laneway p99':>12} {'p99 ratio':>9}")
        for keyed in (True, False):
            medians = _interleaved(ports, "/1k", BAGGAGE if keyed else {}, seconds, repeats)
            hap, lane = medians["haproxy"], medians["laneway"]
            print(f"   {'keyed' if keyed else 'unkeyed':<8} {hap['rps']:>14.0f} "
                  f"{lane['rps']:>14.0f} {lane['rps'] / hap['rps']:>5.2f}x "
                  f"{hap['p99']:>9.2f} ms {lane['p99']:>9.2f} ms "
                  f"{lane['p99'] / hap['p99']:>8.2f}x")
    finally:
        for proc in [*proxies.values(), *servers]:
            proc.stop()
    print(f"   (goals, issue 17: throughput >= 0.80x, p99 <= 2.00x; took "
          f"{time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
