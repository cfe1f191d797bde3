"""The benchmark's peers and tools: wrk, HAProxy and nginx from Debian, installed when missing,
configured with the same rule as laneway (route to a second upstream when `baggage` carries the
key, on member boundaries), each started pinned to a core with `taskset`."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["Proc", "ensure_tools", "free_port", "start", "wait_port", "wrk"]

KEY = "bench0000000"
# The member-boundary rule, as a PCRE both peers accept.
KEY_REGEX = rf"(^|,)[ \t]*laneway-key[ \t]*=[ \t]*{KEY}[ \t]*(;|,|$)"
SIDECAR_TOKEN = "bench-token"  # between feed_server.py and the sidecars it feeds


def ensure_tools(optional: tuple[str, ...] = ()) -> None:
    """wrk, HAProxy and nginx, installed from Debian when missing; `optional` tools too
    (h2load, from nghttp2-client), but without them the caller goes on: it checks for them."""
    packages = {"wrk": "wrk", "haproxy": "haproxy", "nginx": "nginx-light",
                "h2load": "nghttp2-client"}
    required = [packages[tool] for tool in ("wrk", "haproxy", "nginx") if not _have(tool)]
    extra = [packages[tool] for tool in optional if not _have(tool)]
    missing = required + extra
    if not missing:
        return
    print(f"bench: installing {', '.join(missing)} from Debian", flush=True)
    if os.geteuid() != 0:
        if required:
            sys.exit(f"bench: needs {', '.join(required)}; install them (apt-get install "
                     f"{' '.join(required)}) or run as root")
        print(f"bench: not root, cannot install {', '.join(extra)}; going on without",
              flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env,
                      capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        if subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env,
                          capture_output=True, check=False).returncode != 0:
            if required:  # one at a time: an optional package failing does not stop the rest
                subprocess.run(["apt-get", "install", "-y", "-q", *required], env=env,
                               capture_output=True, check=True)
            for pkg in extra:
                if subprocess.run(["apt-get", "install", "-y", "-q", pkg], env=env,
                                  capture_output=True, check=False).returncode != 0:
                    print(f"bench: could not install {pkg}; going on without", flush=True)


def _have(tool: str) -> bool:
    return bool(shutil.which(tool)) or Path(f"/usr/sbin/{tool}").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Proc:
    def __init__(self, argv: list[str], core: int | str, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(["taskset", "-c", str(core), *argv],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def nginx_origin(work: Path, port: int, name: str, core: int) -> Proc:
    """An upstream: nginx answering /1k and /64k from files, one worker."""
    root = work / f"{name}-root"
    root.mkdir(parents=True, exist_ok=True)
    for path in (work, root):  # nginx's workers run as nobody when started by root
        path.chmod(0o755)
    for name_, size in (("1k", 1024), ("64k", 65536)):
        (root / name_).write_bytes(b"x" * size)
        (root / name_).chmod(0o644)
    conf = work / f"{name}.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {work}/{name}.pid; error_log {work}/{name}.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; root {root}; location / {{ add_header x-origin {name}; }} }}
}}""")
    return Proc(["nginx", "-c", str(conf)], core, name)


def origins(work: Path, core: int) -> tuple[list[Proc], int, int]:
    """The baseline's and the fork's origin nginx servers, answering: (them, ports)."""
    base, fork = free_port(), free_port()
    procs = [nginx_origin(work, base, "baseline", core), nginx_origin(work, fork, "fork", core)]
    wait_port(base)
    wait_port(fork)
    return procs, base, fork


def nginx_proxy(work: Path, port: int, base: int, fork: int, core: int) -> Proc:
    conf = work / "nginx-proxy.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {work}/nginx-proxy.pid; error_log {work}/nginx-proxy.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream base {{ server 127.0.0.1:{base}; keepalive 64; }}
  upstream fork {{ server 127.0.0.1:{fork}; keepalive 64; }}
  map $http_baggage $lane {{ "~{KEY_REGEX}" fork; default base; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://$lane; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }}
}}""")
    return Proc(["nginx", "-c", str(conf)], core, "nginx")


def haproxy(work: Path, port: int, base: int, fork: int, core: int | str, h2: bool = False,
            threads: int = 1) -> Proc:
    """HAProxy with the routing rule; `h2`: HTTP/2 with prior knowledge on both sides (h2c)."""
    proto = " proto h2" if h2 else ""
    conf = work / (f"haproxy-h2c-{threads}.cfg" if h2 else f"haproxy-{threads}.cfg")
    conf.write_text(f"""
global
  nbthread {threads}
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend lane
  bind 127.0.0.1:{port}{proto}
  acl keyed req.fhdr(baggage) -m reg '{KEY_REGEX}'
  use_backend fork if keyed
  default_backend base
backend base
  server b 127.0.0.1:{base}{proto}
backend fork
  server f 127.0.0.1:{fork}{proto}
""")
    return Proc(["haproxy", "-f", str(conf)], core, "haproxy")


def start_router(port: int, base: int, fork: int, core: int, sandboxes: int) -> Proc:
    script = str(Path(__file__).with_name("router_server.py"))
    return Proc([sys.executable, script, "--port", str(port), "--upstream", str(base),
                 "--fork", str(fork), "--sandboxes", str(sandboxes)], core, "laneway")


def sidecar(port: int, feed_port: int, workers: int, cores: str) -> Proc:
    """`python -m laneway.router` as the Kubernetes sidecar runs it (following a routes feed,
    sending its hop records), with `--workers`."""
    feed = f"http://127.0.0.1:{feed_port}"
    return Proc([sys.executable, "-m", "laneway.router", "--listen", f"svc={port}",
                 "--routes", f"{feed}/v1/routes", "--hops", f"{feed}/v1/hops",
                 "--token", SIDECAR_TOKEN, "--workers", str(workers)], cores,
                f"laneway-w{workers}")


def start(kind: str, work: Path, port: int, base: int, fork: int, core: int,
          sandboxes: int = 1) -> Proc:
    if kind == "laneway":
        proc = start_router(port, base, fork, core, sandboxes)
    elif kind == "bare":  # the reference of what Python reaches with no features
        proc = Proc([sys.executable, str(Path(__file__).with_name("bare_forwarder.py")),
                     "--port", str(port), "--upstream", str(base), "--fork", str(fork)],
                    core, "bare")
    elif kind == "haproxy":
        proc = haproxy(work, port, base, fork, core)
    else:
        proc = nginx_proxy(work, port, base, fork, core)
    wait_port(port)
    return proc


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, core: int, *, seconds: int, connections: int = 16,
        headers: dict[str, str] | None = None) -> dict[str, float]:
    argv = ["taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
            "--latency", url]
    for name, value in (headers or {}).items():
        argv[5:5] = ["-H", f"{name}: {value}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99,
            "errors": float(errors.group(1)) if errors else 0.0}


def scans_in_use() -> str:
    """Which of the router's scans the benchmarked router runs (`laneway/router/scan.py`)."""
    from laneway.router import scan
    return "compiled (router/_scan.c)" if scan.COMPILED else \
        "in pure Python (not built, or LANEWAY_PURE_PYTHON=1)"
