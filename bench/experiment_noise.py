"""How often an experiment's verdicts hold on a noisy machine: the 3-service chain of the e2e
tests with two approaches to b (one as fast as the baseline, one 120 ms slower), and
`laneway experiment run` (load step only) repeated, while other processes load the cores.

    .venv/bin/python bench/experiment_noise.py --runs 6 --noise bursty --rate 40 --duration 5

Noise: `none`; `steady` (one busy process per core, always); `bursty` (one per core, busy
0.4-1.5 s then idle 0.2-1 s, at random: the adversary of any slice schedule, a burst falls on
some lanes and not others); `ci` (the test suite's own e2e tests in 2 workers beside it).
Prints, per run, the fast sandbox's p95 ratio and verdict and the slow one's verdict; then how
many runs the fast one passed and the slow one failed (both must be every run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.e2e.conftest import Project, chain_yaml
from tests.ports import free_ports


def busy(seed: int, bursty: bool) -> None:
    rng = random.Random(seed)
    while True:
        until = time.monotonic() + (rng.uniform(0.4, 1.5) if bursty else 3600)
        x = 0
        while time.monotonic() < until:
            x += 1
        time.sleep(rng.uniform(0.2, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--noise", choices=["none", "steady", "bursty", "ci"], default="bursty")
    parser.add_argument("--rate", default="40")
    parser.add_argument("--duration", default="5")
    parser.add_argument("--slice", default=None)
    parser.add_argument("--budget", default="1.3x")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ports = dict(zip("abc", free_ports(3), strict=True))
        project = Project(Path(tmp), ports)
        project.write("laneway.yaml", chain_yaml(ports))
        with project.running():
            for name, env in (("fast", "{VERSION: v2}"),
                              ("slow", "{VERSION: v2, DELAY_MS: '120'}")):
                project.write(f"{name}.yaml", f"name: {name}\nforks:\n  - service: b\n"
                                              f"    env: {env}\n")
                project.run("sandbox", "apply", "-f", f"{name}.yaml", "--wait")
            slice_line = f"  slice: {args.slice}s\n" if args.slice else ""
            project.write("experiment.yaml", f"""
name: noise
sandboxes: [fast, slow]
load:
  request: GET ${{services.a.url}}/
  rate: {args.rate}/s
  duration: {args.duration}s
{slice_line}  budget: {{p95: {args.budget}, errors: 1%}}
""")
            hogs: list[multiprocessing.Process] = []
            ci: subprocess.Popen[bytes] | None = None
            if args.noise in ("steady", "bursty"):
                for i in range(os.cpu_count() or 2):
                    hog = multiprocessing.Process(target=busy, args=(i, args.noise == "bursty"),
                                                  daemon=True)
                    hog.start()
                    hogs.append(hog)
            elif args.noise == "ci":
                ci = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-x", "-n", "2",
                                       "tests/e2e", "-k", "not experiment", "-p",
                                       "no:cacheprovider"], cwd=Path(__file__).parents[1],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            passed = failed_slow = 0
            ratios: list[float] = []
            try:
                for run in range(args.runs):
                    out = project.run("experiment", "run", "-f", "experiment.yaml", "-o",
                                      "json", check=False, timeout=600)
                    report = json.loads(out.stdout)
                    rows = {r["target"]: r for r in report["rows"]}
                    fast, slow, base = rows["fast"], rows["slow"], rows["baseline"]
                    ratio = fast["load"].get("ratio") or 0.0
                    ratios.append(ratio)
                    passed += fast["verdict"] == "passed"
                    failed_slow += slow["budget"]["failed"] == ["latency"]
                    print(f"run {run + 1}: baseline p95 {base['load']['p95_ms']:.1f} ms, "
                          f"fast p95 {fast['load']['p95_ms']:.1f} ms ({ratio:.2f}x, "
                          f"{fast['verdict']}, noise {fast['budget']['noise_ms']:.1f} ms, "
                          f"rounds over {fast['budget']['rounds_over']}/"
                          f"{fast['budget']['rounds']}), slow {slow['load']['p95_ms']:.0f} ms "
                          f"({slow['verdict']}: {slow['budget']['failed']})", flush=True)
            finally:
                for hog in hogs:
                    hog.kill()
                if ci is not None:
                    ci.kill()
                    ci.wait()
            print(f"noise {args.noise}, {args.rate}/s, {args.duration}s per lane: fast passed "
                  f"{passed}/{args.runs} (ratio median {statistics.median(ratios):.2f}x, max "
                  f"{max(ratios):.2f}x), slow failed its latency budget {failed_slow}/"
                  f"{args.runs}")


if __name__ == "__main__":
    main()
