"""Which forks a run reached, in istio mode, from the fork pods' own Istio telemetry: no laneway
router sees that traffic, but every fork pod's Envoy sidecar counts the requests it served in
the standard metric `istio_requests_total`, on the merged Prometheus endpoint of the pod
(`:15020/stats/prometheus`). The operator scrapes each fork pod before and after a run
(`laneway.runtime.kubernetes.telemetry`); this module turns two scrapes into what the report
says, as `core.runs.fork_responses` does from the router's hops.

Label names are Istio's standard ones (istio.io, docs/reference/config/metrics; the same set in
istio/proxy's testdata/metric/server_request_total.yaml.tmpl). A sidecar reports a request it
received with `reporter="destination"` and one it sent with `reporter="source"`; only the first
is traffic the fork served.

The parser reads the Prometheus text exposition format 0.0.4 (prometheus/docs,
content/docs/instrumenting/exposition_formats.md) strictly, but one line at a time: a line it
cannot read is counted and skipped, so one odd line does not lose the pod's counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from laneway.core.grpc import grpc_code_name

__all__ = [
    "REQUESTS_METRIC",
    "STATS_PATH",
    "STATS_PORT",
    "Answer",
    "IstioSample",
    "IstioStats",
    "Traffic",
    "inbound_counts",
    "parse_istio_requests",
    "parse_istio_stats",
    "reached",
    "status_class",
]

REQUESTS_METRIC = "istio_requests_total"
# The pod's merged endpoint (Envoy's stats plus the agent's and the app's), which the
# `prometheus.io/port: "15020"` annotation of an injected pod points Prometheus at.
STATS_PORT = 15020
STATS_PATH = "/stats/prometheus"

# Istio's standard label names.
REPORTER = "reporter"
DESTINATION_WORKLOAD = "destination_workload"
DESTINATION_WORKLOAD_NAMESPACE = "destination_workload_namespace"
RESPONSE_CODE = "response_code"
GRPC_RESPONSE_STATUS = "grpc_response_status"
RESPONSE_FLAGS = "response_flags"
NO_FLAGS = "-"  # Envoy's %RESPONSE_FLAGS% when none is set

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_BLANKS = re.compile(r"[ \t]*")
# One `name="value"` pair; a value's only escapes are \\, \" and \n.
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\[\\"n])*)"[ \t]*')
_ESCAPE = re.compile(r"\\([\\\"n])")
# A value as Go's strconv.ParseFloat reads it in decimal, plus an optional integer timestamp
# (milliseconds since the epoch).
_VALUE = re.compile(
    r"[ \t]*([+-]?(?:inf(?:inity)?|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?))"
    r"(?:[ \t]+(-?[0-9]+))?[ \t]*",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class IstioSample:
    """One `istio_requests_total` series of one scrape: its labels and its count so far."""

    labels: Mapping[str, str] = field(hash=False)
    value: float
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class IstioStats:
    """What one scrape held: the `istio_requests_total` samples, and how many lines could not be
    read (`malformed`; the first few in `malformed_lines`, 1-based, to look at)."""

    samples: tuple[IstioSample, ...]
    malformed: int = 0
    malformed_lines: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """How a pod answered some of its requests: the HTTP status (0: Envoy sent none, e.g. the
    caller went away first), the gRPC status of a gRPC call (None for plain HTTP) and Envoy's
    response flags (`-`: none; `UF`, `UH`, `URX`, `NR`, `DC`, ...: the sidecar answered or cut
    the request short, so the application may never have served it)."""

    code: int
    grpc_status: int | None = None
    flags: str = NO_FLAGS


@dataclass(frozen=True, slots=True)
class Traffic:
    """What a pod served between two scrapes: `requests` in all, by status class (`classes`, as
    in a report's `fork_responses`: `2xx`, `5xx`, `grpc UNAVAILABLE`), how many of them carried
    Envoy response flags (`flagged`), and whether its counters were reset in between (`reset`:
    the pod or its sidecar restarted, so requests served before the restart are not counted)."""

    requests: int = 0
    classes: Mapping[str, int] = field(default_factory=dict, hash=False)
    flagged: int = 0
    reset: bool = False

    def __add__(self, other: Traffic) -> Traffic:
        """The traffic of two pods of one fork, together."""
        classes = dict(self.classes)
        for name, count in other.classes.items():
            classes[name] = classes.get(name, 0) + count
        return Traffic(self.requests + other.requests, dict(sorted(classes.items())),
                       self.flagged + other.flagged, self.reset or other.reset)


def parse_istio_requests(text: str) -> list[IstioSample]:
    """The `istio_requests_total` samples of a Prometheus text exposition; unreadable lines are
    skipped (`parse_istio_stats` counts them)."""
    return list(parse_istio_stats(text).samples)


def parse_istio_stats(text: str, *, keep_lines: int = 5) -> IstioStats:
    """The `istio_requests_total` samples of a Prometheus text exposition and the count of lines
    that are neither a comment, a blank nor a sample. Other metrics' samples are passed over
    once their name is read: they are most of a sidecar's scrape and none of our business."""
    samples: list[IstioSample] = []
    malformed: list[int] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        name = _METRIC_NAME.match(line)
        if name is None or name.end() == len(line) or line[name.end()] not in "{ \t":
            malformed.append(number)
            continue
        if name.group() != REQUESTS_METRIC:
            continue
        sample = _sample(line, name.end())
        if sample is None:
            malformed.append(number)
        else:
            samples.append(sample)
    return IstioStats(tuple(samples), len(malformed), tuple(malformed[:keep_lines]))


def _sample(line: str, pos: int) -> IstioSample | None:
    """The label set, value and timestamp that follow a metric name at `pos`, or None."""
    labels: dict[str, str] = {}
    pos = _skip_blanks(line, pos)
    if line.startswith("{", pos):
        pos += 1
        while True:
            pos = _skip_blanks(line, pos)
            if line.startswith("}", pos):
                pos += 1
                break
            pair = _LABEL.match(line, pos)
            if pair is None or pair.group(1) in labels:
                return None
            labels[pair.group(1)] = _ESCAPE.sub(_unescape, pair.group(2))
            pos = pair.end()
            if line.startswith(",", pos):
                pos += 1
            elif line.startswith("}", pos):
                pos += 1
                break
            else:
                return None
    value = _VALUE.fullmatch(line, pos)
    if value is None:
        return None
    stamp = value.group(2)
    return IstioSample(MappingProxyType(labels), float(value.group(1)),
                       int(stamp) if stamp is not None else None)


def _skip_blanks(line: str, pos: int) -> int:
    blanks = _BLANKS.match(line, pos)
    return pos if blanks is None else blanks.end()


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    return "\n" if char == "n" else char


def inbound_counts(samples: Iterable[IstioSample], workload: str | None = None, *,
                   namespace: str | None = None) -> dict[Answer, float]:
    """The requests a pod received (`reporter="destination"`), summed by how it answered them,
    optionally only those for one `destination_workload` (and `..._namespace`). Series that
    differ in other labels (the caller, the protocol, mTLS) add up; a value that is not a finite
    number is left out, as no counter has one."""
    counts: dict[Answer, float] = {}
    for sample in samples:
        labels = sample.labels
        if labels.get(REPORTER) != "destination" or not math.isfinite(sample.value):
            continue
        if workload is not None and labels.get(DESTINATION_WORKLOAD) != workload:
            continue
        if namespace is not None and labels.get(DESTINATION_WORKLOAD_NAMESPACE) != namespace:
            continue
        code = _number(labels.get(RESPONSE_CODE))
        answer = Answer(0 if code is None else code, _number(labels.get(GRPC_RESPONSE_STATUS)),
                        labels.get(RESPONSE_FLAGS) or NO_FLAGS)
        counts[answer] = counts.get(answer, 0.0) + sample.value
    return counts


def _number(text: str | None) -> int | None:
    """A status label's number; None for gRPC's label on a plain HTTP request (empty)."""
    return int(text) if text is not None and text.isascii() and text.isdigit() else None


def status_class(answer: Answer) -> str:
    """`2xx` for a 204; `grpc UNAVAILABLE` for a gRPC call that failed (its error travels in a
    200's trailers), as a report's `fork_responses` names them."""
    if answer.grpc_status:
        return f"grpc {grpc_code_name(answer.grpc_status)}"
    return f"{answer.code // 100}xx"


def reached(before: Mapping[Answer, float], after: Mapping[Answer, float]) -> Traffic:
    """What one pod served between two scrapes (`inbound_counts` of each). Counters only grow
    while Envoy runs, so any count lower than before means they all started again from zero (the
    pod or its sidecar restarted): then `after` is itself the traffic since the restart, the best
    that can be known. A series missing from `after` alone is not a reset: it served nothing."""
    reset = any(after[answer] < count for answer, count in before.items() if answer in after)
    classes: dict[str, int] = {}
    requests = flagged = 0
    for answer, count in after.items():
        delta = round(count if reset else count - before.get(answer, 0.0))
        if delta <= 0:
            continue
        requests += delta
        name = status_class(answer)
        classes[name] = classes.get(name, 0) + delta
        if answer.flags != NO_FLAGS:
            flagged += delta
    return Traffic(requests, dict(sorted(classes.items())), flagged, reset)
