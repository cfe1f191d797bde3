"""The experiment file (`experiment.yaml`): which sandboxes (or route groups) to compare, and
what to check on each: a test command (one run each), a load step against the baseline, a diff.

Parsed like the other specs (`core.spec`): pydantic models, unknown fields refused with the
nearest valid name, every problem reported as `SpecError` with the path of the field at fault.
The CLI and the MCP server parse it (`client/experiments.py` runs it); nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from laneway.core.duration import parse_duration
from laneway.core.loadmath import (
    NOISE_FLOOR_MS,
    Budget,
    min_requests,
    parse_fraction,
    parse_quantile,
    parse_rate,
    parse_ratio,
)
from laneway.core.spec import (
    DNS_LABEL_RE,
    SpecError,
    load_yaml_document,
    spec_error_from_validation,
)

__all__ = [
    "MAX_REQUESTS",
    "ExperimentSpec",
    "LoadSpec",
    "interpolate_request",
    "parse_experiment",
    "read_experiment",
]

MAX_REQUESTS = 200_000  # the most one load step may send, all lanes together
MAX_RATE = 2000.0  # per lane: beyond it a 2-core machine measures itself, not the target
# Why a quarter of a second: a burst of machine noise (a GC, a compile, another test) lasts
# tenths of a second to seconds; with slices this short it spans several lanes' slices, so it
# falls on the baseline and the sandboxes alike instead of on one lane's whole slice (with 1 s
# slices a single burst could put one lane's p95 off by itself), and a step of a few seconds
# still has a dozen rounds for the budget's "over in most rounds" rule.
SLICE_S = 0.25
MIN_SLICE_S = 0.05  # the generator's own timing (sleeps, task start-up) is ~1 ms a slice
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_REF_RE = re.compile(r"\$\{services\.([^.}]+)\.(url|port|host)\}")


class LoadSpec(BaseModel):
    """The load step: one request template sent at a fixed rate to every lane."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request: str = Field(description="`METHOD URL`, e.g. `GET ${services.web.url}/quote?item=`"
                         "book`; the URL must be a service's (or loopback)")
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    rate: float = Field(description="per lane: `50/s`, `600/m`")
    duration: float = Field(description="per lane: `20s` (in short slices, interleaved)")
    slice: float = Field(default=SLICE_S, description="the length of one slice, `250ms`")
    timeout: float = Field(default=10.0, description="a request not answered by then is an "
                           "error, counted at its full wait")
    max_connections: int = Field(default=256, ge=1, le=4096)
    budget: Budget = Field(default_factory=Budget)

    @field_validator("request")
    @classmethod
    def _request(cls, value: str) -> str:
        method, _, url = value.strip().partition(" ")
        if method.upper() not in _METHODS or not url.strip():
            raise ValueError(f"{value!r}: write `METHOD URL`, e.g. `GET "
                             "${services.web.url}/quote?item=book`")
        probe = _REF_RE.sub("http://127.0.0.1:1", url.strip())
        parts = urlsplit(probe)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url.strip()!r}: the URL must be http://HOST:PORT/... (a "
                             "service's public address: ${services.NAME.url})")
        return f"{method.upper()} {url.strip()}"

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> float:
        rate = parse_rate(str(value))
        if rate > MAX_RATE:
            raise ValueError(f"{value!r}: at most {MAX_RATE:g}/s per lane")
        return rate

    @field_validator("duration", "slice", "timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        return parse_duration(str(value))

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Budget:
        if isinstance(value, Budget):
            return value
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping, e.g. {p95: 1.3x, errors: 1%}")
        quantiles = [k for k in value if str(k).startswith("p")]
        unknown = [str(k) for k in value if k not in ("errors", "noise_floor")
                   and k not in quantiles]
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}; the fields here are: a "
                             "percentile (p50, p95, p99 ...), errors, noise_floor")
        if len(quantiles) > 1:
            raise ValueError(f"give one percentile, not {', '.join(map(str, quantiles))}")
        field = "percentile"
        try:
            quantile, ratio = 95.0, None
            if quantiles:
                field = str(quantiles[0])
                quantile, ratio = parse_quantile(field), parse_ratio(value[quantiles[0]])
            field = "errors"
            errors = parse_fraction(value["errors"]) if "errors" in value else None
            field = "noise_floor"
            floor = parse_duration(str(value["noise_floor"])) * 1000 \
                if "noise_floor" in value else NOISE_FLOOR_MS
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from exc
        return Budget(quantile, ratio, errors, floor)

    @model_validator(mode="after")
    def _bounded(self) -> LoadSpec:
        if self.slice > self.duration:
            given = "slice" in self.model_fields_set
            raise ValueError(f"{'' if given else 'the default '}slice ({self.slice:g}s) must "
                             f"not be longer than duration ({self.duration:g}s): give a longer "
                             f"duration{' or a shorter slice' if given else ''}")
        if self.slice < MIN_SLICE_S:
            raise ValueError(f"slice ({self.slice:g}s) must be at least {MIN_SLICE_S:g}s")
        return self

    def few_requests(self) -> str | None:
        """A warning when rate x duration is too few requests a lane for the budget's
        percentile to be more than its slowest one or two (`min_requests`). A warning, not an
        error: the verdict still holds for a regression as plain as 100 ms, and a quick look
        with few requests is a fair thing to ask for."""
        budget = self.budget
        needed, planned = min_requests(budget.quantile), self.rate * self.duration
        if budget.ratio is None or planned >= needed - 1e-9:
            return None
        return (f"rate x duration is {planned:g} requests a lane: a {budget.name} from fewer "
                f"than {needed} is one of the slowest one or two, so one noisy moment can "
                f"decide the latency verdict; raise rate or duration for a sturdier one")

    @property
    def method(self) -> str:
        return self.request.partition(" ")[0]

    @property
    def url(self) -> str:
        return self.request.partition(" ")[2]

    @property
    def rounds(self) -> int:
        return max(1, round(self.duration / self.slice))


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sandboxes: list[str] = Field(default_factory=list)
    routegroups: list[str] = Field(default_factory=list)
    tests: list[str] | str | None = Field(default=None, description="run as `laneway run` "
                                          "against each sandbox: an argv list or a shell line")
    tests_timeout: float | None = None
    cwd: str | None = Field(default=None, description="where the tests run, relative to the "
                            "experiment file's folder (the default)")
    parallel: bool = Field(default=True, description="run the tests of all sandboxes at once "
                           "(false: one after another, when they share data)")
    load: LoadSpec | None = None
    diff: bool = False

    @field_validator("name", "sandboxes", "routegroups")
    @classmethod
    def _names(cls, value: Any) -> Any:
        for name in [value] if isinstance(value, str) else value:
            if not DNS_LABEL_RE.match(name) or len(name) > 63:
                raise ValueError(f"{name!r} must be a DNS label: lowercase letters, digits "
                                 "and '-'")
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("names a target more than once")
        return value

    @field_validator("tests")
    @classmethod
    def _tests(cls, value: list[str] | str | None) -> list[str] | str | None:
        if value is not None and not (value.strip() if isinstance(value, str) else value):
            raise ValueError("must name a command (an argv list or a shell line), or be left "
                             "out")
        return value

    @field_validator("tests_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(str(value))

    @model_validator(mode="after")
    def _checks(self) -> ExperimentSpec:
        if not self.sandboxes and not self.routegroups:
            raise ValueError("sandboxes: name at least one sandbox (or route group) to compare")
        if "baseline" in self.sandboxes or "baseline" in self.routegroups:
            raise ValueError("`baseline` is the baseline's own row: rename that sandbox")
        if set(self.sandboxes) & set(self.routegroups):
            raise ValueError("a name is both in sandboxes and routegroups")
        if self.tests is None and self.load is None:
            raise ValueError("nothing to check: give tests, load, or both")
        if self.diff and self.tests is None:
            raise ValueError("diff: the diff replays the requests the tests made; give "
                             "`tests` too")
        if self.load is not None:
            total = self.load.rate * self.load.duration * (1 + len(self.targets))
            if total > MAX_REQUESTS:
                raise ValueError(f"load: {total:.0f} requests in all (rate x duration x "
                                 f"lanes); at most {MAX_REQUESTS}")
        return self

    @property
    def targets(self) -> list[tuple[str, str]]:
        """(kind, name) of every sandbox and route group, in the file's order."""
        return [("sandbox", n) for n in self.sandboxes] + \
            [("routegroup", n) for n in self.routegroups]


def parse_experiment(data: Mapping[str, Any], source: str | None = None) -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from_validation(exc, source, ExperimentSpec) from exc


def read_experiment(text: str, source: str) -> ExperimentSpec:
    """The experiment in a file's text; `SpecError` naming the field for any problem."""
    return parse_experiment(load_yaml_document(text, source), source)


def interpolate_request(text: str, services: Mapping[str, str]) -> str:
    """`${services.NAME.url|host|port}` in a request template, from the services' public URLs
    (`{"web": "http://127.0.0.1:19401"}`); `SpecError` naming an unknown service."""

    def sub(match: re.Match[str]) -> str:
        name, part = match.group(1), match.group(2)
        if name not in services:
            known = ", ".join(sorted(services)) or "none"
            raise SpecError([("load.request", f"no service {name!r} in the baseline (its "
                              f"services: {known})")])
        url = urlsplit(services[name])
        if part == "url":
            return services[name].rstrip("/")
        return str(url.port) if part == "port" else str(url.hostname)

    return _REF_RE.sub(sub, text)
