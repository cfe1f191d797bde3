"""A run's command executed by the client (the CLI or the MCP server), for control planes that
do not run commands themselves: a cluster's operator answers `POST /v1/runs` with `executor:
client`, because the tests and the code are where the client is, not in the operator's pod.

The command gets what a local run gives it (the routing key, the baggage, the services' URLs
from the operator, an injecting `HTTP_PROXY`, JUnit XML from pytest), its output goes to the
caller's stream as it comes, and the outcome (exit code, output tail, JUnit XML) is what the
client posts back to `/v1/runs/ID/result`, where the report is made from the hops.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from laneway.core.inject_proxy import InjectingProxy
from laneway.core.processes import terminate_group
from laneway.core.runs import command_environment

__all__ = ["execute", "interrupted_result"]

TAIL_LINES = 40
MAX_JUNIT = 16 << 20


def _environment(report: Mapping[str, Any], base: Mapping[str, str], proxy: InjectingProxy,
                 run_dir: Path) -> dict[str, str]:
    env = dict(base)
    # The services' URLs the operator knows (cluster DNS names): a URL the user set already
    # (a port-forward, an ingress) wins, as it says how to reach them from here.
    for name, value in (report.get("environment") or {}).items():
        env.setdefault(str(name), str(value))
    return command_environment(env, str(report["routing_key"]), str(report["id"]), run_dir,
                               proxy.url, report.get("sandbox"))


async def execute(report: Mapping[str, Any], command: list[str] | str, *,
                  cwd: str | None = None, env: Mapping[str, str] | None = None,
                  timeout_s: float | None = None, stream: BinaryIO | None = None) -> dict[
                      str, Any]:
    """Run `command` for the run `report` and return its outcome (`RunResult`'s fields).
    Cancelled (Ctrl-C), the command is stopped and the cancellation goes on."""
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    proxy = InjectingProxy(str(report["routing_key"]))
    await proxy.start()
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    size = 0
    exit_code: int | None = None
    timed_out = False
    try:
        with tempfile.TemporaryDirectory(prefix=f"laneway-{report['id']}-") as folder:
            run_dir = Path(folder)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, cwd=cwd, env=_environment(report, env if env is not None
                                                     else os.environ, proxy, run_dir),
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                return {"exit_code": None, "duration_s": 0.0, "error": (
                    f"cannot start {argv[0]!r}: {exc.strerror or exc}; check the command "
                    "and the folder")}
            assert proc.stdout is not None
            partial = ""

            async def pump() -> None:
                nonlocal size, partial
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(65536):
                    size += len(chunk)
                    if stream is not None:
                        stream.write(chunk)
                        stream.flush()
                    lines = (partial + chunk.decode("utf-8", "replace")).split("\n")
                    partial = lines.pop()
                    tail.extend(line[:400] for line in lines)

            try:
                await asyncio.wait_for(asyncio.gather(pump(), proc.wait()), timeout_s)
                exit_code = proc.returncode
            except TimeoutError:
                timed_out = True
                exit_code = await terminate_group(proc)
            except asyncio.CancelledError:
                await asyncio.shield(terminate_group(proc))
                raise
            if partial:
                tail.append(partial[:400])
            junit_path = run_dir / "junit.xml"
            junit = junit_path.read_text("utf-8", "replace")[:MAX_JUNIT] \
                if junit_path.exists() else None
    finally:
        await proxy.close()
    return {"exit_code": exit_code, "timed_out": timed_out,
            "duration_s": round(time.monotonic() - started, 3),
            "proxied_requests": proxy.requests, "output_bytes": size,
            "output_tail": list(tail), "junit": junit}


def interrupted_result(duration_s: float) -> dict[str, Any]:
    """What a client posts when its command was stopped before it ended (Ctrl-C)."""
    return {"exit_code": None, "interrupted": True, "duration_s": round(duration_s, 3)}
