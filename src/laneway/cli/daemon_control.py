"""`laneway up` and `laneway down`: starting and stopping the daemon process.

The daemon is its own process (`python -m laneway.daemon`); in the foreground `up` becomes it
(exec), so Ctrl-C reaches it directly; with `--detach` it runs in its own session, logging to
`.laneway/daemon.log`, and `up` waits for the baseline through the API.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from laneway.client import ApiClient, CliError, connect
from laneway.core.layout import (
    STATE_DIR_NAME,
    StateLayout,
    find_project_file,
    make_private,
    restrict_umask,
)
from laneway.core.processes import alive, find_marked, owner_env, stop_processes, stopped

__all__ = ["down_environment", "start_daemon"]


def _running_pid(layout: StateLayout) -> int | None:
    try:
        pid = int(layout.lock.read_text().strip())
    except (OSError, ValueError):
        return None
    if not alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"laneway.daemon" in cmdline else None


def start_daemon(file: Path, *, detach: bool, timeout: float) -> None:
    from laneway.core.spec import SpecError, load_project  # pydantic: `up` only

    if not file.is_absolute() and file == Path("laneway.yaml") and not file.exists():
        found = find_project_file(Path.cwd())  # from a subfolder, as every other command
        if found is not None:
            file = found
    config = file.resolve()
    try:
        project = load_project(config)
    except SpecError as exc:
        raise CliError(exc.render(), code=2) from exc
    layout = StateLayout(config.parent / STATE_DIR_NAME)
    pid = _running_pid(layout)
    if pid is not None:
        raise CliError(f"laneway is already running for {config} (pid {pid}); "
                       "`laneway status` shows it, `laneway down` stops it")
    argv = [sys.executable, "-m", "laneway.daemon", "-f", str(config)]
    # The daemon and all it starts carry the environment's marker: `laneway down` finds them
    # whatever happened to their parents.
    os.environ.update(owner_env(layout.root), LANEWAY_ROLE="daemon")
    if not detach:
        sys.stdout.flush()
        os.execv(sys.executable, argv)
    # daemon.log holds what the daemon prints (env values among it): private from its first
    # byte. The daemon gets the user's umask back, to hand on to the processes it starts.
    user_umask = restrict_umask()
    _make_private(layout)
    with contextlib.suppress(FileNotFoundError):
        layout.api.unlink()
    with layout.daemon_log.open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                umask=user_umask)
    log_start = layout.daemon_log.stat().st_size
    deadline = time.monotonic() + timeout
    while not layout.api.exists():
        if proc.poll() is not None:
            said = _log_since(layout, log_start).strip()
            # The daemon's own "Error: ..." line is the message; do not say "Error:" twice.
            errors = [ln.removeprefix("Error: ") for ln in said.splitlines()
                      if ln.startswith("Error: ")]
            raise CliError(errors[-1] if errors else "the daemon exited: " + said)
        if time.monotonic() > deadline:
            proc.terminate()
            raise CliError(f"the daemon did not start within {timeout:g}s; see "
                           f"{layout.daemon_log}")
        time.sleep(0.05)
    client = connect(start=config.parent)
    try:
        _wait_for_baseline(client, project.name, deadline)
    except CliError:
        _shutdown(client, layout)
        proc.wait(timeout=10)
        raise
    url = client.url
    print(f"laneway: {project.name} is up (control plane {url}, daemon pid {proc.pid})")
    for name, svc in project.services.items():
        print(f"  {name:<16} http://127.0.0.1:{svc.port}")
    preview = client.get("/v1/status").get("preview")
    if preview:
        moved = "" if preview["port"] == project.preview.port else \
            f" (port {project.preview.port} is taken: another project's?)"
        print(f"  previews         {preview['url']}{moved}")
    print("  web UI           laneway ui")


def _make_private(layout: StateLayout) -> None:
    stuck = make_private(layout.root)
    if stuck:
        shown = ", ".join(str(p) for p in stuck[:3]) + (" …" if len(stuck) > 3 else "")
        print(f"laneway: warning: cannot make {len(stuck)} entries of {layout.root} private "
              f"(they belong to another user): {shown}; `sudo chown -R $USER {layout.root}` "
              "fixes it", file=sys.stderr)


def _log_since(layout: StateLayout, offset: int) -> str:
    with layout.daemon_log.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode("utf-8", "replace")


def _wait_for_baseline(client: ApiClient, name: str, deadline: float) -> None:
    while True:
        services = client.get("/v1/services")
        failed = [s for s in services if s["phase"] in ("crashed", "unhealthy")]
        if failed:
            svc = failed[0]
            logs = client.request("GET", f"/v1/services/{svc['name']}/logs",
                                  params={"tail": 15})
            raise CliError(
                f"baseline service {svc['name']} {svc['phase']}: {svc['message']}; "
                "laneway stopped. Its last log lines:",
                [line for line in str(logs).splitlines() if "--- laneway:" not in line],
            )
        if all(s["ready"] for s in services):
            return
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{s['name']} ({s['phase']})" for s in services
                                if not s["ready"])
            raise CliError(f"{name}: not every baseline service is healthy in time: {waiting}")
        time.sleep(0.1)


def _shutdown(client: ApiClient, layout: StateLayout | None, wait: float = 30.0) -> None:
    """Ask the daemon to stop (it stops the data plane); one that does not answer (crashed,
    stalled by SIGSTOP, hung) gets SIGTERM, and SIGKILL if it is stopped or does not exit."""
    pid = _running_pid(layout) if layout else None
    try:
        client.request("POST", "/v1/shutdown", timeout=10)
    except CliError:
        if pid is None:
            return  # nothing answers and nothing runs: the sweep stops what is left
        os.kill(pid, signal.SIGTERM)
    if pid is None:
        return
    if stopped(pid) or not _wait_dead(pid, wait):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_dead(pid, 5.0)
        print(f"laneway: the daemon (pid {pid}) did not stop by itself; killed it")


def down_environment(api: str | None) -> None:
    """Stop the daemon, the data plane and every process of the environment: what a crashed
    daemon or data plane left behind too (found by their marker, `core.processes`)."""
    from laneway.core.layout import find_state_dir

    try:
        client = connect(api)
    except CliError:
        layout = find_state_dir(Path.cwd())
        if layout is None:
            raise
        pid = _running_pid(layout)
        if pid is not None:
            # No API to ask: stop a daemon whose API is gone but whose process is not.
            os.kill(pid, signal.SIGTERM)
            print(f"laneway: sent SIGTERM to the daemon (pid {pid})")
            _wait_dead(pid, 30.0)
        left = _sweep(layout)
        if pid is None and not left:
            raise
        print("laneway: stopped")
        return
    if client.context is not None:
        raise CliError(f"`laneway down` stops a local environment; context {client.context} "
                       "is a cluster's operator: delete its sandboxes (`laneway sandbox "
                       "delete`), or uninstall it (helm uninstall laneway -n laneway-system)")
    _shutdown(client, client.layout)
    if client.layout is not None:
        _sweep(client.layout)
    print("laneway: stopped")


def _wait_dead(pid: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def _sweep(layout: StateLayout) -> bool:
    """Stop what is still running of the environment: a data plane whose daemon died (asked
    first, so that it stops its processes gracefully), then anything else that carries the
    environment's marker (a shell's grandchild, a test command of an interrupted run)."""
    try:
        info = json.loads(layout.dataplane_info.read_text())
        dataplane = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        dataplane = None
    stopped = False
    if dataplane is not None and alive(dataplane):
        os.kill(dataplane, signal.SIGTERM)
        print(f"laneway: stopping the data plane (pid {dataplane})")
        _wait_dead(dataplane, 40.0)
        stopped = True
    left = find_marked(layout.root)
    if left:
        stop_processes(left)
        print(f"laneway: stopped {len(left)} leftover processes: "
              f"{', '.join(map(str, left))}")
    return stopped or bool(left)
