"""The user-facing specs: `laneway.yaml` (the baseline), sandboxes and route groups.

Specs are pydantic models that forbid unknown fields, so a typo is an error with its field path,
not a silently ignored setting. `SpecError` carries every problem found as (path, message) pairs;
the CLI and the API print them as `file: services.pricing.port: …`.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from laneway.core.duration import parse_duration

__all__ = [
    "DNS_LABEL_RE",
    "PROTOCOLS",
    "RESOURCE_REF_RE",
    "ForkSpec",
    "ProjectSpec",
    "ResourceSpec",
    "RouteGroupSpec",
    "RouterSettings",
    "SandboxSpec",
    "ServiceProtocol",
    "ServiceSpec",
    "SpecError",
    "check_sandbox_against_project",
    "format_loc",
    "interpolate",
    "interpolate_resources",
    "load_project",
    "load_yaml_document",
    "load_yaml_documents",
    "parse_project",
    "parse_route_group",
    "parse_sandbox",
    "service_url",
    "spec_error_from_validation",
    "with_base_dir",
]

DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
_REF_RE = re.compile(r"\$\{services\.([^.}]+)\.(url|port|host)\}")
LOCAL_HOST = "127.0.0.1"


class SpecError(Exception):
    """One or more problems in a spec, each with the path of the field at fault."""

    def __init__(self, issues: list[tuple[str, str]], source: str | None = None) -> None:
        self.issues = issues
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        lines = [f"{prefix}{path + ': ' if path else ''}{message}" for path, message in self.issues]
        return "\n".join(lines)


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def spec_error_from_validation(exc: ValidationError, source: str | None = None,
                               model: type[BaseModel] | None = None) -> SpecError:
    issues = []
    for err in exc.errors():
        # pydantic prefixes messages of our own validators with "Value error, ".
        message = str(err["msg"]).removeprefix("Value error, ")
        loc = tuple(p for p in err["loc"] if p not in ("function-after[check_run(), str]",))
        if err["type"] == "extra_forbidden" and model is not None and loc:
            message = _unknown_field(model, loc)
        issues.append((format_loc(loc), message))
    return SpecError(issues, source)


def _unknown_field(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """"unknown field", with the nearest valid name of that place (`helth` -> health)."""
    import difflib

    names = _field_names_at(model, loc[:-1])
    given = str(loc[-1])
    close = difflib.get_close_matches(given, names, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    if names:
        return f"unknown field; the fields here are: {', '.join(sorted(names))}"
    return "unknown field"


def _field_names_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the model found at `loc` under `model` (a list's index or a dict's
    key steps into its item model)."""
    current: Any = model
    skip = 0
    for part in loc:
        if skip:  # an index of a list, a key of a dict
            skip -= 1
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current, skip = _item_model(field.annotation)
    if skip or not (isinstance(current, type) and issubclass(current, BaseModel)):
        return []
    return [name for name in current.model_fields if name != "run_line"]


def _item_model(annotation: Any) -> tuple[Any, int]:
    """The model under an annotation and how many containers hold it: `X`, `X | None` -> (X,
    0); `list[X]`, `dict[str, X]` -> (X, 1)."""
    depth = 0
    for _ in range(6):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation, depth
        origin = get_origin(annotation)
        args = [a for a in get_args(annotation) if a is not type(None)]
        if not args:
            return annotation, depth
        if origin in (list, dict, tuple, set, frozenset):
            depth += 1
        annotation = args[-1]
    return annotation, depth


def _duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("must be longer than zero")
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("must be a duration such as 45s, 30m, 2h or 1d")


# An HTTP field name (RFC 9110 §5.1: a token).
HEADER_NAME_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_extensions(cls, data: Any) -> Any:
        # `x-…` fields are the author's (anchors to reuse, notes), as in Compose files.
        if isinstance(data, dict) and any(isinstance(k, str) and k.startswith("x-")
                                          for k in data):
            return {k: v for k, v in data.items()
                    if not (isinstance(k, str) and k.startswith("x-"))}
        return data


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _LABEL_KEY_RE.match(key):
            raise ValueError(f"label key {key!r} must be 1-63 chars of letters, digits, . _ / -")
        if len(value) > 63:
            raise ValueError(f"label {key!r}: value must be at most 63 characters")
    return labels


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key in env:
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"env name {key!r} is not a valid variable name")
    return env


def _stringify_env(value: Any) -> Any:
    # YAML reads `PORT: 80` and `DEBUG: true` as int and bool; env values are strings.
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(item, bool):
                out[key] = "true" if item else "false"
            elif isinstance(item, int | float):
                out[key] = str(item)
            else:
                out[key] = item
        return out
    return value



# An environment as YAML gives it (`PORT: 80`, `DEBUG: true`) made strings, names checked.
EnvMap = Annotated[dict[str, str], BeforeValidator(_stringify_env), AfterValidator(_check_env)]


def _split_run(value: object) -> object:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command line: {exc}") from exc
    return value


# How the router reaches a service's processes: "http" is HTTP/1.1 (gRPC calls still go over
# HTTP/2), "h2c" and "grpc" are HTTP/2 with prior knowledge for every request.
ServiceProtocol = Literal["http", "h2c", "grpc"]
PROTOCOLS: tuple[str, ...] = get_args(ServiceProtocol)
# `grpc:NAME` names the service asked about in grpc.health.v1.Health/Check (a protobuf
# package-qualified name such as shop.Pricing); plain `grpc` asks about the whole server.
_GRPC_HEALTH_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HEALTH_FORMS = ("'tcp', an HTTP path starting with '/' (e.g. /healthz), or 'grpc' / "
                 "'grpc:<service>' (e.g. grpc:shop.Pricing)")


class ServiceSpec(_Spec):
    """One baseline service: how to run it and where it is reached."""

    run: list[str]
    port: int = Field(ge=1, le=65535)
    shell: bool = False
    env: EnvMap = Field(default_factory=dict)
    protocol: ServiceProtocol = "http"
    health: str = "tcp"
    depends_on: list[str] = Field(default_factory=list)
    cwd: str | None = None
    startup_timeout: float = 30.0
    run_line: str = ""  # the command as written, for `shell: true` and for display

    @model_validator(mode="before")
    @classmethod
    def _keep_run_line(cls, data: Any) -> Any:
        if isinstance(data, dict) and "run" in data:
            data = dict(data)
            run = data["run"]
            if isinstance(run, str):
                data.setdefault("run_line", run)
            elif isinstance(run, list):
                data.setdefault("run_line", shlex.join(str(a) for a in run))
        return data

    @field_validator("run", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_run(value)

    @field_validator("run")
    @classmethod
    def _run_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name a command to run (an argv list or a command line)")
        return value

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: object) -> object:
        if value not in PROTOCOLS:
            raise ValueError(f"must be http (HTTP/1.1), h2c (HTTP/2 with prior knowledge) or "
                             f"grpc, got {value!r}")
        return value

    @field_validator("health")
    @classmethod
    def _health(cls, value: str) -> str:
        return _check_health(value)

    @field_validator("startup_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> float:
        return _duration(value)

    def argv(self) -> list[str]:
        """The argv to exec: the list as given, or `sh -c LINE` when `shell: true`."""
        if self.shell:
            return ["/bin/sh", "-c", self.run_line or shlex.join(self.run)]
        return list(self.run)


def _check_health(value: str) -> str:
    if value in ("tcp", "grpc") or value.startswith("/"):
        return value
    name = value.removeprefix("grpc:")
    if name == value:
        raise ValueError(f"must be {_HEALTH_FORMS}")
    if not _GRPC_HEALTH_NAME_RE.match(name):
        raise ValueError(f"{value!r}: after 'grpc:' comes the gRPC service name to ask "
                         "grpc.health.v1.Health about, e.g. grpc:shop.Pricing (letters, "
                         "digits, '_', '.', '-'); plain 'grpc' asks about the whole server")
    return value


_LOOPBACK_NAMES = ("localhost", "127.0.0.1")


def parse_address(value: str) -> tuple[str, int]:
    """`127.0.0.1:9000`, `localhost:9000` or `9000` -> ("127.0.0.1", 9000): a process on this
    machine (the router and its health checks reach it over loopback)."""
    text = str(value).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT with a port from 1 to 65535 "
                         "(e.g. 127.0.0.1:9000)")
    if host not in _LOOPBACK_NAMES:
        raise ValueError(f"{text!r}: the address must be on this machine (127.0.0.1:PORT or "
                         "localhost:PORT), where the router and its health checks reach it")
    return "127.0.0.1", int(port_text)


DATAPLANE_ROUTER_FIELDS = (
    "extra_headers", "connect_timeout", "upstream_timeout", "request_head_timeout",
    "keepalive_timeout", "client_timeout", "tunnel_timeout", "max_connections",
    "max_header_bytes", "max_response_header_bytes", "hop_capacity", "capture_services",
    "capture_rate", "capture_body_bytes",
)


class RouterSettings(_Spec):
    """How the router reads keys and waits for upstreams."""

    extra_headers: list[str] = Field(default_factory=list)
    connect_timeout: float = 3.0
    # Inactivity of an upstream while it owes an answer: progress either way resets it.
    upstream_timeout: float = 60.0
    # Defaults no looser than nginx's (client_header_timeout 60 s, keepalive_timeout 75 s,
    # client_body_timeout and send_timeout 60 s); laneway.router.timeouts has the whole table.
    request_head_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    client_timeout: float = 60.0
    tunnel_timeout: float = 3600.0
    max_connections: int = Field(default=10_000, ge=1, le=1_000_000)  # per listener
    max_header_bytes: int = Field(default=65536, ge=1024, le=1048576)
    max_response_header_bytes: int = Field(default=65536, ge=1024, le=1048576)
    hop_capacity: int = Field(default=100_000, ge=100, le=10_000_000)
    # Request/response pairs the routers keep (opt-in, per service; `*` for all), for
    # `laneway captures` and `laneway diff`: a sample of them, bodies cut at a size, credentials
    # replaced by a stable hash. Kept with the hop records, so bounded like them.
    capture_services: list[str] = Field(default_factory=list)
    capture_rate: float = Field(default=1.0, gt=0, le=1)
    capture_body_bytes: int = Field(default=65536, ge=0, le=1048576)
    # What the control plane keeps of them, whatever captured them (a service, a sandbox with
    # `capture: true`, a run with `--capture`): the newest, up to this many bytes of bodies
    # and this age; older captures are dropped (their hop records stay).
    capture_max_bytes: int = Field(default=64 << 20, ge=1 << 20, le=16 << 30)
    capture_max_age: float = 3600.0
    # How long a replaced or deleted fork may take to finish the requests it has, after it
    # stopped getting new ones and before it gets SIGTERM.
    drain_timeout: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("connect_timeout", "upstream_timeout", "request_head_timeout",
                     "keepalive_timeout", "client_timeout", "tunnel_timeout", "drain_timeout",
                     "capture_max_age", mode="before")
    @classmethod
    def _timeouts(cls, value: object) -> float:
        return _duration(value)

    @field_validator("connect_timeout", "upstream_timeout", "request_head_timeout",
                     "keepalive_timeout", "client_timeout", "tunnel_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive duration, e.g. 30s")
        return value

    def dataplane(self) -> dict[str, object]:
        """What the data plane's routers take (`laneway.router.RouterSettings`), as JSON."""
        return self.model_dump(include=set(DATAPLANE_ROUTER_FIELDS))

    @field_validator("extra_headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        for name in value:
            if not HEADER_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
        return [name.lower() for name in value]


DEFAULT_PREVIEW_PORT = 7780


class PortSettings(_Spec):
    """Where laneway's own listeners go: the control plane's API (default: a free port the
    kernel picks), and the range the internal ports of processes come from (`PORT`; default:
    the kernel's ephemeral range). For firewalls, port forwarding, and machines where other
    software owns the ephemeral range."""

    api: int | None = Field(default=None, ge=1, le=65535)
    internal: str | None = None  # "30000-39999"

    @field_validator("internal")
    @classmethod
    def _range(cls, value: str | None) -> str | None:
        if value is None:
            return None
        low, sep, high = str(value).partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise ValueError(f"{value!r} is not a range of ports such as 30000-39999")
        first, last = int(low), int(high)
        if not 1024 <= first <= last <= 65535:
            raise ValueError(f"{value!r}: ports from 1024 to 65535, the first no larger than "
                             "the last")
        if last - first < 15:
            raise ValueError(f"{value!r}: at least 16 ports (a fork takes a new one at "
                             "every start)")
        return f"{first}-{last}"

    def internal_range(self) -> tuple[int, int] | None:
        if self.internal is None:
            return None
        low, _, high = self.internal.partition("-")
        return int(low), int(high)


class PreviewSettings(_Spec):
    """The preview edge (`http://<sandbox>--<service>.localhost:<port>/`, core/preview.py):
    one port on loopback. The default port gives way to a free one when another project holds
    it; a port set here is this project's, and its being taken is an error."""

    enabled: bool = True
    port: int = Field(default=DEFAULT_PREVIEW_PORT, ge=1, le=65535)

    @property
    def fallback(self) -> bool:
        return "port" not in self.model_fields_set


class DiffSettings(_Spec):
    """The noise rule of `laneway diff` and `laneway run --diff` (core/diff.py): a field's
    differences count only when more than `relative` of them are not explained by the
    baseline's own noise, and they are more than `absolute` of the requests."""

    relative: float = Field(default=0.20, ge=0, lt=1)
    absolute: float = Field(default=0.0003, ge=0, lt=1)


class ProjectSpec(_Spec):
    """`laneway.yaml`: the baseline's services."""

    name: str
    # Merged under every service's own env (a service's value wins): OpenTelemetry settings,
    # say, written once.
    env: EnvMap = Field(default_factory=dict)
    services: dict[str, ServiceSpec]
    router: RouterSettings = Field(default_factory=RouterSettings)
    diff: DiffSettings = Field(default_factory=DiffSettings)
    preview: PreviewSettings = Field(default_factory=PreviewSettings)
    ports: PortSettings = Field(default_factory=PortSettings)
    # The folder of laneway.yaml (set by `with_base_dir`): a fork's relative `cwd` starts there.
    _root: str = PrivateAttr(default="")

    @property
    def root(self) -> str | None:
        return self._root or None

    @model_validator(mode="before")
    @classmethod
    def _shared_env(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("env"), dict) or \
                not isinstance(data.get("services"), dict):
            return data
        shared = _stringify_env(data["env"])
        services: dict[Any, Any] = {}
        for name, svc in data["services"].items():
            own = svc.get("env") if isinstance(svc, dict) else None
            services[name] = {**svc, "env": {**shared, **(own if isinstance(own, dict) else
                                                         {})}} \
                if isinstance(svc, dict) else svc
        return {**data, "services": services}

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not DNS_LABEL_RE.match(value) or len(value) > 63:
            raise ValueError("must be a DNS label: lowercase letters, digits and '-'")
        return value

    @field_validator("services")
    @classmethod
    def _services(cls, value: dict[str, ServiceSpec]) -> dict[str, ServiceSpec]:
        if not value:
            raise ValueError("must name at least one service")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> ProjectSpec:
        issues: list[tuple[str, str]] = []
        ports: dict[int, str] = {}
        for name, svc in self.services.items():
            if not DNS_LABEL_RE.match(name) or len(name) > 63:
                issues.append(
                    (f"services.{name}", "service names must be DNS labels (a-z, 0-9, '-')")
                )
            if svc.port in ports:
                issues.append(
                    (f"services.{name}.port", f"port {svc.port} is already used by service "
                     f"{ports[svc.port]!r}; every service needs its own port")
                )
            ports[svc.port] = name
            for i, dep in enumerate(svc.depends_on):
                if dep not in self.services:
                    issues.append(
                        (f"services.{name}.depends_on[{i}]", f"unknown service {dep!r}")
                    )
                elif dep == name:
                    issues.append((f"services.{name}.depends_on[{i}]", "a service cannot "
                                   "depend on itself"))
            for path, text in _strings_of(name, svc):
                for ref in _REF_RE.finditer(text):
                    if ref.group(1) not in self.services:
                        issues.append((path, f"{ref.group(0)} names an unknown service"))
                issues += _unknown_refs(path, text, resources=False)
        cycle = _find_cycle({n: s.depends_on for n, s in self.services.items()})
        if cycle:
            issues.append(("services", "depends_on has a cycle: " + " -> ".join(cycle)))
        if self.ports.api is not None and self.ports.api in ports:
            issues.append(("ports.api", f"port {self.ports.api} is service "
                           f"{ports[self.ports.api]!r}'s; the API needs its own port"))
        preview = self.preview
        if preview.enabled and not preview.fallback and preview.port in ports:
            issues.append(("preview.port", f"port {preview.port} is service "
                           f"{ports[preview.port]!r}'s; the preview edge needs its own port"))
        if issues:
            raise SpecError(issues)
        return self

    def listeners(self) -> tuple[dict[str, int], dict[str, str], tuple[int, bool] | None]:
        """What the data plane listens on for this project (`DataPlaneRuntime.listen`): each
        service's public port, its protocol, and the preview edge's (port, fallback) or None."""
        preview = self.preview
        return ({name: svc.port for name, svc in self.services.items()},
                {name: svc.protocol for name, svc in self.services.items()},
                (preview.port, preview.fallback) if preview.enabled else None)

    def start_order(self) -> list[str]:
        """Services in an order where every service comes after what it depends on."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            for dep in self.services[name].depends_on:
                visit(dep)
            order.append(name)

        for name in self.services:
            visit(name)
        return order


_ANY_REF_RE = re.compile(r"\$\{([^}]*)\}")


def _unknown_refs(path: str, text: str, *, resources: bool) -> list[tuple[str, str]]:
    """`${…}` that laneway does not replace: a mistake (`${PORT}` would reach the process as
    those six characters), with the forms there are."""
    out = []
    for ref in _ANY_REF_RE.finditer(text):
        if _REF_RE.fullmatch(ref.group(0)) or (resources and
                                               RESOURCE_REF_RE.fullmatch(ref.group(0))):
            continue
        forms = "${services.NAME.url}, ${services.NAME.host}, ${services.NAME.port}" + (
            ", ${resources.NAME.OUTPUT}" if resources else "")
        hint = "; PORT is in the process's environment already (read $PORT there)" \
            if ref.group(1) == "PORT" else ""
        out.append((path, f"{ref.group(0)} is not something laneway replaces: it replaces "
                    f"{forms}{hint}"))
    return out


def _strings_of(name: str, svc: ServiceSpec) -> list[tuple[str, str]]:
    # A `shell: true` command line is the shell's to expand (`${PORT}` is right there).
    out = [] if svc.shell else \
        [(f"services.{name}.run[{i}]", arg) for i, arg in enumerate(svc.run)]
    out += [(f"services.{name}.env.{k}", v) for k, v in svc.env.items()]
    if svc.cwd:
        out.append((f"services.{name}.cwd", svc.cwd))
    return out


def _find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def interpolate_resources(text: str, outputs: Mapping[str, Mapping[str, str]]) -> str:
    """Replace `${resources.NAME.OUTPUT}`; a missing output raises KeyError naming it."""

    def sub(match: re.Match[str]) -> str:
        name, output = match.group(1), match.group(2)
        values = outputs.get(name)
        if values is None or output not in values:
            raise KeyError(f"${{resources.{name}.{output}}}: resource {name!r} has no output "
                           f"{output!r} (outputs: {', '.join(sorted(values or {})) or 'none'})")
        return str(values[output])

    return RESOURCE_REF_RE.sub(sub, text)


def service_url(port: int) -> str:
    return f"http://{LOCAL_HOST}:{port}"


def interpolate(text: str, project: ProjectSpec) -> str:
    """Replace `${services.NAME.url|port|host}` with the service's public address."""

    def sub(match: re.Match[str]) -> str:
        svc = project.services[match.group(1)]
        field = match.group(2)
        if field == "url":
            return service_url(svc.port)
        if field == "port":
            return str(svc.port)
        return LOCAL_HOST

    return _REF_RE.sub(sub, text)


def _check_name(value: str, limit: int) -> str:
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters (got {len(value)})")
    if not DNS_LABEL_RE.match(value):
        raise ValueError(
            "must be a DNS label: lowercase letters, digits and '-', starting and ending "
            "with a letter or digit"
        )
    return value


class ForkSpec(_Spec):
    """A sandbox's own version of one baseline service: the baseline definition, overridden."""

    service: str
    run: list[str] | None = None
    shell: bool | None = None
    env: EnvMap = Field(default_factory=dict)
    run_line: str | None = None
    # A process the developer runs by hand (under a debugger, from another checkout): laneway
    # health-checks it and routes the key to it, but never starts or stops it.
    address: str | None = None
    # Overrides of the baseline's definition (a fork from another checkout, say). A relative
    # `cwd` is relative to the project's folder (the CLI resolves one given in a sandbox file
    # against that file's folder).
    cwd: str | None = None
    health: str | None = None
    startup_timeout: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _keep_run_line(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("run"), str):
            data = dict(data)
            data.setdefault("run_line", data["run"])
        return data

    @field_validator("run", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_run(value)

    @field_validator("run")
    @classmethod
    def _run_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must name a command, or be left out to inherit the baseline's")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, port = parse_address(value)
        return f"{host}:{port}"

    @field_validator("health")
    @classmethod
    def _health(cls, value: str | None) -> str | None:
        return None if value is None else _check_health(value)

    @field_validator("startup_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> float | None:
        return None if value is None else _duration(value)

    @model_validator(mode="after")
    def _address_or_command(self) -> ForkSpec:
        if self.address is not None and (self.run is not None or self.shell is not None):
            raise ValueError("a fork with an `address` is a process you run yourself: leave "
                             "out `run` and `shell` (its `env` is what `laneway sandbox env` "
                             "prints for it)")
        return self

    def resolve(self, base: ServiceSpec, root: str | None = None) -> ServiceSpec:
        """The baseline service's definition with this fork's overrides; env merges over it.
        `root`: the project's folder, for a relative `cwd`."""
        update: dict[str, Any] = {"env": {**base.env, **self.env}}
        if self.run is not None:
            update["run"] = list(self.run)
            update["run_line"] = self.run_line or shlex.join(self.run)
        if self.shell is not None:
            update["shell"] = self.shell
        if self.cwd is not None:
            update["cwd"] = self.cwd if os.path.isabs(self.cwd) or root is None \
                else os.path.normpath(os.path.join(root, self.cwd))
        if self.health is not None:
            update["health"] = self.health
        if self.startup_timeout is not None:
            update["startup_timeout"] = self.startup_timeout
        return base.model_copy(update=update)


_RESOURCE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
RESOURCE_REF_RE = re.compile(r"\$\{resources\.([^.}]+)\.([A-Za-z0-9_]+)\}")


class ResourceSpec(_Spec):
    """Per-sandbox state (a database branch, a Redis namespace…) made by a plugin."""

    name: str
    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _RESOURCE_NAME_RE.match(value):
            raise ValueError("must be 1-30 characters: a lowercase letter, then lowercase "
                             "letters, digits or '_'")
        return value


class SandboxSpec(_Spec):
    name: Annotated[str, Field(min_length=1)]
    labels: dict[str, str] = Field(default_factory=dict)
    ttl: float | None = None
    # Every router captures the requests that carry this sandbox's key, at every service
    # (`laneway captures`, `laneway diff --capture`); credentials hashed as for
    # router.capture_services.
    capture: bool = False
    resources: list[ResourceSpec] = Field(default_factory=list)
    forks: list[ForkSpec] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, 40)

    @field_validator("labels", mode="before")
    @classmethod
    def _label_strings(cls, value: Any) -> Any:
        return _stringify_env(value)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: object) -> float | None:
        return None if value is None else _duration(value)

    @model_validator(mode="after")
    def _unique_forks(self) -> SandboxSpec:
        names: dict[str, int] = {}
        for i, resource in enumerate(self.resources):
            if resource.name in names:
                raise SpecError([(f"resources[{i}].name", f"resource {resource.name!r} is "
                                  f"already declared by resources[{names[resource.name]}]")])
            names[resource.name] = i
        seen: dict[str, int] = {}
        for i, fork in enumerate(self.forks):
            if fork.service in seen:
                raise SpecError(
                    [(f"forks[{i}].service", f"service {fork.service!r} is already forked by "
                      f"forks[{seen[fork.service]}]; a sandbox forks each service once")]
                )
            seen[fork.service] = i
        return self


class LabelMatch(_Spec):
    labels: dict[str, str]

    @field_validator("labels")
    @classmethod
    def _some(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("must name at least one label (KEY: GLOB) to select sandboxes")
        return value


class RouteGroupSpec(_Spec):
    """A routing key spanning every sandbox whose labels match."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    match: LabelMatch

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, 40)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


def check_sandbox_against_project(spec: SandboxSpec, project: ProjectSpec) -> None:
    """Problems a sandbox has only in the light of the baseline (unknown services, refs)."""
    issues: list[tuple[str, str]] = []
    known = ", ".join(sorted(project.services))
    for i, fork in enumerate(spec.forks):
        if fork.service not in project.services:
            issues.append(
                (f"forks[{i}].service", f"unknown service {fork.service!r}; the baseline has: "
                 f"{known}")
            )
        texts = [(f"forks[{i}].env.{k}", v) for k, v in fork.env.items()]
        base = project.services.get(fork.service)
        shell = fork.shell if fork.shell is not None else bool(base and base.shell)
        if not shell:
            texts += [(f"forks[{i}].run[{j}]", a) for j, a in enumerate(fork.run or [])]
        declared = {r.name for r in spec.resources}
        for path, text in texts:
            issues += _unknown_refs(path, text, resources=True)
            for ref in _REF_RE.finditer(text):
                if ref.group(1) not in project.services:
                    issues.append((path, f"{ref.group(0)} names an unknown service"))
            for ref in RESOURCE_REF_RE.finditer(text):
                if ref.group(1) not in declared:
                    known_resources = ", ".join(sorted(declared)) or "none"
                    issues.append((path, f"{ref.group(0)} names a resource this sandbox does "
                                   f"not declare (resources: {known_resources})"))
    if issues:
        raise SpecError(issues)


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys (PyYAML keeps the last one silently, which
    would turn two services with the same name into one). Anchors, aliases and merge keys
    (`<<: *otel`) work as YAML says: a key written beside a merge overrides the merged one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_document(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([("", f"invalid YAML: {where}{problem}")], source) from exc
    if not isinstance(data, dict):
        raise SpecError([("", "must be a YAML mapping (key: value) at the top level")], source)
    return data


def load_yaml_documents(text: str, source: str) -> list[dict[str, Any]]:
    """Every document of a file (`---` between them), each a mapping; empty ones skipped."""
    try:
        docs = list(yaml.load_all(text, Loader=_StrictLoader))  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([("", f"invalid YAML: {where}{problem}")], source) from exc
    found = [doc for doc in docs if doc is not None]
    for i, doc in enumerate(found):
        if not isinstance(doc, dict):
            where = f" (document {i + 1})" if len(found) > 1 else ""
            raise SpecError([("", f"must be a YAML mapping (key: value) at the top "
                              f"level{where}")], source)
    if not found:
        raise SpecError([("", "must be a YAML mapping (key: value) at the top level")], source)
    return found


def _parse(model: type[_Spec], data: Mapping[str, Any], source: str | None) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from_validation(exc, source, model) from exc
    except SpecError as exc:
        exc.source = source
        raise SpecError(exc.issues, source) from exc


def load_project(path: Path) -> ProjectSpec:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([("", f"cannot read the file: {exc.strerror}")], str(path)) from exc
    result: ProjectSpec = _parse(ProjectSpec, load_yaml_document(text, str(path)), str(path))
    return with_base_dir(result, path.resolve().parent)


def with_base_dir(project: ProjectSpec, base: Path) -> ProjectSpec:
    """Services run in the folder of `laneway.yaml` unless their `cwd` says otherwise
    (a relative `cwd` is relative to that folder too)."""
    services = {
        name: svc.model_copy(update={"cwd": str(base / svc.cwd) if svc.cwd else str(base)})
        for name, svc in project.services.items()
    }
    out = project.model_copy(update={"services": services})
    out._root = str(base)
    return out


def parse_project(data: Mapping[str, Any], source: str | None = None) -> ProjectSpec:
    result: ProjectSpec = _parse(ProjectSpec, data, source)
    return result


def parse_sandbox(data: Mapping[str, Any], source: str | None = None) -> SandboxSpec:
    result: SandboxSpec = _parse(SandboxSpec, data, source)
    return result


def parse_route_group(data: Mapping[str, Any], source: str | None = None) -> RouteGroupSpec:
    result: RouteGroupSpec = _parse(RouteGroupSpec, data, source)
    return result
