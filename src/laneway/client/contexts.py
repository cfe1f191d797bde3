"""Contexts: named control planes to talk to, as kubeconfig has them, kept in the user's config
folder (`$LANEWAY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/laneway`, else `~/.config/laneway`), in
`contexts.yaml`.

A context reaches the laneway API of a cluster's operator (`--k8s`): at its URL, or, without
one, through `kubectl port-forward` to the operator's Service, started for the command and
stopped after it. Its token is given (`--token`), read from a file before each use
(`--token-file`), or printed by a command (`--token-command`, e.g. `kubectl create token
NAME`); the operator checks it with the cluster's API server. `--namespace` is where its
sandboxes live (sent as the `laneway-namespace` header).

`laneway --context NAME …`, `LANEWAY_CONTEXT=NAME`, or `laneway context use NAME` select one;
otherwise the local environment found from the current folder is used, as before.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Context", "Contexts", "Reached", "config_dir", "reach", "select", "selected"]

NAMESPACE_HEADER = "laneway-namespace"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_FORWARDING = re.compile(rb"Forwarding from 127\.0\.0\.1:(\d+)")
_selected: list[str] = []  # `--context`, set by the CLI's root option


def config_dir() -> Path:
    if os.environ.get("LANEWAY_CONFIG_DIR"):
        return Path(os.environ["LANEWAY_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "laneway"


@dataclass(slots=True)
class Context:
    name: str
    kind: str = "k8s"
    url: str | None = None  # none: a port-forward to the operator's Service
    namespace: str = "default"
    token: str | None = None
    token_file: str | None = None
    token_command: str | None = None
    operator_namespace: str = "laneway-system"
    service: str = "laneway-operator"
    port: int = 8790
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = self.url or f"port-forward to svc/{self.service} -n {self.operator_namespace}"
        token = "token" if self.token else f"token file {self.token_file}" if self.token_file \
            else f"token command `{self.token_command}`" if self.token_command else "no token"
        return f"{where}, namespace {self.namespace}, {token}"


class ContextError(Exception):
    pass


class Contexts:
    """The contexts file: read, changed and written whole (written atomically, mode 0600: it
    may hold tokens)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.path = (folder or config_dir()) / "contexts.yaml"
        self.current: str | None = None
        self.items: dict[str, Context] = {}
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        try:
            data = yaml.safe_load(self.path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ContextError(f"{self.path}: cannot read it ({exc}); fix or remove the "
                               "file") from exc
        if not isinstance(data, dict):
            raise ContextError(f"{self.path}: not a mapping; fix or remove the file")
        self.current = data.get("current")
        for name, raw in (data.get("contexts") or {}).items():
            if not isinstance(raw, dict):
                raise ContextError(f"{self.path}: contexts.{name}: not a mapping")
            known = {k: v for k, v in raw.items() if k in Context.__dataclass_fields__}
            try:
                self.items[str(name)] = Context(**{**known, "name": str(name)})
            except TypeError as exc:
                raise ContextError(f"{self.path}: contexts.{name}: {exc}") from exc

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"current": self.current, "contexts": {
            name: {k: v for k, v in asdict(ctx).items() if k != "name" and v not in (None, {})}
            for name, ctx in sorted(self.items.items())}}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(data, out, sort_keys=False)
        tmp.replace(self.path)

    def add(self, ctx: Context) -> None:
        if not _NAME.fullmatch(ctx.name):
            raise ContextError(f"NAME: {ctx.name!r} is not a context name (letters, digits, "
                               "'.', '_', '-'; at most 63)")
        if ctx.url is not None and not re.match(r"^https?://[^/\s]+", ctx.url):
            raise ContextError(f"--url: {ctx.url!r} is not an http(s) URL, e.g. "
                               "http://127.0.0.1:8790")
        if sum(x is not None for x in (ctx.token, ctx.token_file, ctx.token_command)) > 1:
            raise ContextError("give one of --token, --token-file, --token-command")
        self.items[ctx.name] = ctx

    def get(self, name: str) -> Context:
        ctx = self.items.get(name)
        if ctx is None:
            known = ", ".join(sorted(self.items)) or "none yet"
            raise ContextError(f"--context {name}: no such context (known: {known}); add it "
                               "with `laneway context add NAME --k8s --url URL`")
        return ctx


def select(name: str | None) -> None:
    """The context of this process's commands (`laneway --context NAME`)."""
    _selected[:] = [name] if name else []


def selected() -> str | None:
    """The context chosen by `--context`, `LANEWAY_CONTEXT` or `laneway context use`, if any
    ("local" means the environment found from the current folder)."""
    name = _selected[0] if _selected else os.environ.get("LANEWAY_CONTEXT")
    if name is None:
        contexts = Contexts() if (config_dir() / "contexts.yaml").exists() else None
        name = contexts.current if contexts else None
    return None if name in (None, "", "local") else name


@dataclass(slots=True)
class Reached:
    """A context made usable: its URL, token, headers, and what to stop afterwards."""

    url: str
    token: str
    headers: dict[str, str]
    forward: subprocess.Popen[bytes] | None = None

    def close(self) -> None:
        if self.forward is not None and self.forward.poll() is None:
            self.forward.terminate()
            try:
                self.forward.wait(5)
            except subprocess.TimeoutExpired:
                self.forward.kill()
                self.forward.wait()
        if self.forward is not None and self.forward.stdout is not None:
            self.forward.stdout.close()


def _token(ctx: Context) -> str:
    if ctx.token:
        return ctx.token
    if ctx.token_file:
        try:
            return Path(ctx.token_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ContextError(f"context {ctx.name}: token file {ctx.token_file}: "
                               f"{exc.strerror}") from exc
    if ctx.token_command:
        try:
            done = subprocess.run(shlex.split(ctx.token_command), capture_output=True,
                                  timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ContextError(f"context {ctx.name}: token command `{ctx.token_command}` "
                               f"failed: {exc}") from exc
        if done.returncode or not done.stdout.strip():
            raise ContextError(f"context {ctx.name}: token command `{ctx.token_command}` "
                               f"exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace').strip()[:300]}")
        return done.stdout.decode().strip()
    raise ContextError(f"context {ctx.name} has no token: add one with `laneway context add "
                       f"{ctx.name} --k8s … --token-command 'kubectl create token NAME -n NS'`")


def _drain(stream: Any, keep: list[bytes], found: list[int], ready: threading.Event) -> None:
    """Read a kubectl stream to its end (it logs every forwarded connection: a pipe nobody
    reads would stop it), noting the local port and the last lines."""
    for line in stream:
        match = _FORWARDING.search(line)
        if match and not found:
            found.append(int(match.group(1)))
            ready.set()
        keep.append(line)
        del keep[:-5]
    ready.set()  # it ended


def _port_forward(ctx: Context) -> tuple[str, subprocess.Popen[bytes]]:
    argv = ["kubectl", "port-forward", "-n", ctx.operator_namespace,
            f"svc/{ctx.service}", f":{ctx.port}", "--address", "127.0.0.1"]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        raise ContextError(f"context {ctx.name}: cannot start kubectl for a port-forward "
                           f"({exc.strerror}); install kubectl, or give the operator's URL "
                           "with --url") from exc
    found: list[int] = []
    said: list[bytes] = []
    ready = threading.Event()
    threading.Thread(target=_drain, args=(proc.stdout, said, found, ready),
                     daemon=True).start()
    ready.wait(20)
    if not found:
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        err = b" ".join(line.strip() for line in said).decode(errors="replace")[:300]
        raise ContextError(f"context {ctx.name}: `{shlex.join(argv)}` did not forward a port: "
                           f"{err or 'no answer in 20 s'}")
    return f"http://127.0.0.1:{found[0]}", proc


def reach(name: str) -> Reached:
    """The URL, token and headers of context `name` (starting its port-forward if it has no
    URL)."""
    ctx = Contexts().get(name)
    token = _token(ctx)
    headers = {NAMESPACE_HEADER: ctx.namespace}
    if ctx.url:
        return Reached(ctx.url.rstrip("/"), token, headers)
    url, proc = _port_forward(ctx)
    return Reached(url, token, headers, proc)
