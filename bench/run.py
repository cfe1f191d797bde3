"""`make bench`: every benchmark group, with the machine it ran on.

Groups 1-2 (router vs HAProxy and nginx, routing scale) are in router_bench.py, groups 3-5
(lifecycle, density, control plane) in lifecycle.py, group 6 (planning passes of the local
reconciler and the Kubernetes operator) in planning.py, group 7 (router under abuse: memory and
limits, next to HAProxy) in abuse.py, group 8 (gRPC unary, server streaming and bidi through the
router, against direct and HAProxy in h2c mode) in grpc_bench.py. BENCH_GROUPS=1,3 runs a
subset.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import abuse
import grpc_bench
import lifecycle
import peers
import planning
import router_bench


def main() -> None:
    groups = set(os.environ.get("BENCH_GROUPS", "1,2,3,4,5,6,7,8").split(","))
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               platform.processor())
    print(f"laneway bench on {cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
          f"Python {platform.python_version()}; the router's scans {peers.scans_in_use()}")
    if groups & {"1", "2"}:
        peers.ensure_tools()
        router_bench.main()
    if "3" in groups:
        lifecycle.group3(int(os.environ.get("BENCH_SANDBOXES", "100")))
        lifecycle.three_hops()
    if "4" in groups:
        lifecycle.group4(int(os.environ.get("BENCH_DENSITY", "100")))
    if "5" in groups:
        lifecycle.group5(int(os.environ.get("BENCH_STORED", "1000")))
    if "6" in groups:
        planning.main()
    if "7" in groups:
        peers.ensure_tools()
        abuse.main()
    if "8" in groups:
        peers.ensure_tools(optional=("h2load",))
        grpc_bench.main()


if __name__ == "__main__":
    main()
