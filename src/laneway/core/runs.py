"""What a run's report says, computed from plain data: which forks the run reached, where the
routing key was lost (propagation leaks), the verdict, JUnit failures, and the Markdown report.

A leak is found two ways:

- by trace: a hop without the key inside a trace that carried it. The service to blame is the
  one whose outbound call lost it: the innermost hop that encloses the keyless hop in time (a
  service's outbound calls happen while its own request is in flight) and still had the key;
- by caller (hops name the process that made them, `Hop.caller`): a request made by a fork of
  sandbox S without S's key is that fork's leak, certainly, with or without a trace (a service
  that drops its whole context, traceparent and baggage together, is found this way); an unkeyed
  request made by a baseline process while it was serving a keyed request is a probable leak of
  that service, reported with the request it overlapped.
"""

from __future__ import annotations

import bisect
import re
import shlex
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from laneway.core.baggage import baggage_value
from laneway.core.grpc import grpc_code_name
from laneway.core.hops import Hop, key_conflict_note

__all__ = [
    "RUN_ID_ENV",
    "Leak",
    "Verdict",
    "command_environment",
    "failed_tests",
    "find_leaks",
    "fork_responses",
    "forks_reached",
    "hop_findings",
    "is_error_line",
    "key_conflicts",
    "leak_sentence",
    "new_report",
    "parse_junit",
    "render_diff_markdown",
    "render_markdown",
    "unreached_reason",
    "verdict_of",
]

RUN_ID_ENV = "LANEWAY_RUN_ID"
Verdict = Literal["passed", "failed", "vacuous", "running", "error", "interrupted"]
_SLACK = 0.0005  # seconds: hop times come from two clocks read microseconds apart
# Level words, and exception names in any language's style: TypeError, ValueError,
# NullPointerException, panic: …
_ERROR_RE = re.compile(
    r"\b(WARN|WARNING|ERR|ERROR|CRITICAL|FATAL|PANIC|Traceback|Unhandled)\b"
    r"|[A-Za-z]*(Error|Exception)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Leak:
    service: str  # the service whose outbound call dropped the key
    trace_id: str
    lost_at: str  # the service that received the call without the key
    path: str  # request path at lost_at
    process: str = ""  # who made the keyless call: `service@sandbox` (a fork) or `service`
    certainty: Literal["certain", "probable"] = "certain"
    found_by: Literal["trace", "caller"] = "trace"
    serving: str = ""  # the keyed request the process was serving when it made the call

    def to_json(self) -> dict[str, str]:
        return {"service": self.service, "trace_id": self.trace_id, "lost_at": self.lost_at,
                "path": self.path, "process": self.process or self.service,
                "certainty": self.certainty, "found_by": self.found_by,
                "serving": self.serving}


def _encloses(outer: Hop, inner: Hop) -> bool:
    return (outer is not inner and outer.at <= inner.at + _SLACK
            and outer.at + outer.duration_ms / 1000 + _SLACK >= inner.at
            + inner.duration_ms / 1000)


def find_leaks(hops: Iterable[Hop], keys: set[str]) -> list[Leak]:
    """Leaks of `keys` among `hops`: by trace (the hops of a trace must all be present) and by
    caller (the hops of the same time window)."""
    every = list(hops)
    traces: dict[str, list[Hop]] = {}
    for hop in every:
        if hop.trace_id:
            traces.setdefault(hop.trace_id, []).append(hop)
    leaks: dict[tuple[str, str], Leak] = {}
    for trace_id, trace in traces.items():
        if not any(h.routing_key in keys for h in trace):
            continue
        trace.sort(key=lambda h: h.at)
        for hop in trace:
            if hop.routing_key:
                continue
            enclosing = [h for h in trace if _encloses(h, hop)]
            if enclosing:
                caller = max(enclosing, key=lambda h: h.at)
                if caller.routing_key not in keys:
                    continue  # lost further up: already reported there
            else:
                earlier = [h for h in trace if h.at <= hop.at and h.routing_key in keys]
                if not earlier:
                    continue  # the trace entered here without the key: not a leak
                caller = earlier[-1]
            process = hop.caller if hop.caller and hop.caller != "external" else caller.service
            leak = Leak(caller.service, trace_id, hop.service, hop.path, process=process,
                        serving=f"{caller.method} {caller.path}")
            leaks.setdefault((caller.service, trace_id), leak)
    for leak in _caller_leaks(every, keys):
        if leak.trace_id and (leak.service, leak.trace_id) in leaks:
            continue  # found by its trace already
        leaks.setdefault((leak.process, leak.trace_id or f"{leak.lost_at} {leak.path}"), leak)
    return sorted(leaks.values(), key=lambda leak: (leak.service, leak.trace_id, leak.path))


def _caller_leaks(hops: list[Hop], keys: set[str]) -> list[Leak]:
    keyed = [h for h in hops if h.routing_key in keys]
    if not keyed:
        return []
    # The sandboxes (or route groups) the keys select, as their forks name themselves.
    sandboxes = {h.destination for h in keyed if h.destination != "baseline"}
    serving: dict[tuple[str, str], _Serving] = {}  # (service, destination) -> its keyed hops
    for hop in keyed:
        # In a cluster a caller is a pod, named by its Service (`pricing.shop`); the hops of a
        # Service with several ports are at `pricing.shop:grpc`, ...: the same process.
        service = hop.service.partition(":")[0]
        serving.setdefault((service, hop.destination), _Serving()).add(hop)
    for known in serving.values():
        known.ready()
    out: list[Leak] = []
    for hop in hops:
        caller = hop.caller
        if not caller or caller == "external" or hop.routing_key in keys:
            continue
        service, at, sandbox = caller.partition("@")
        if at:
            if sandbox not in sandboxes:
                continue  # another sandbox's fork, with its own key
            found = serving.get((service, sandbox))
            during = found.enclosing(hop) if found else []
            out.append(Leak(service, hop.trace_id, hop.service, hop.path, process=caller,
                            found_by="caller", serving=_request(during)))
        elif not hop.routing_key:
            found = serving.get((service, "baseline"))
            during = found.enclosing(hop) if found else []
            if during:
                out.append(Leak(service, hop.trace_id, hop.service, hop.path, process=caller,
                                certainty="probable", found_by="caller",
                                serving=_request(during)))
    return out


class _Serving:
    """The keyed hops of one service, by start time: which of them enclose a given hop, found
    without looking at all of them (a bisection, then back as far as the longest one lasts)."""

    __slots__ = ("hops", "longest", "starts")

    def __init__(self) -> None:
        self.hops: list[Hop] = []
        self.starts: list[float] = []
        self.longest = 0.0

    def add(self, hop: Hop) -> None:
        self.hops.append(hop)

    def ready(self) -> None:
        self.hops.sort(key=lambda h: h.at)
        self.starts = [h.at for h in self.hops]
        self.longest = max((h.duration_ms / 1000 for h in self.hops), default=0.0)

    def enclosing(self, inner: Hop) -> list[Hop]:
        end = bisect.bisect_right(self.starts, inner.at + _SLACK)
        out = []
        for i in range(end - 1, -1, -1):
            if self.starts[i] < inner.at - self.longest - _SLACK:
                break
            if _encloses(self.hops[i], inner):
                out.append(self.hops[i])
        return out


def _request(hops: list[Hop]) -> str:
    if not hops:
        return ""
    inner = max(hops, key=lambda h: h.at)
    trace = f" (trace {inner.trace_id})" if inner.trace_id else ""
    return f"{inner.method} {inner.path}{trace}"


def render_diff_markdown(diff: Mapping[str, Any]) -> list[str]:
    """A diff against the baseline (control/diffs.py) as Markdown lines."""
    lines = [f"**Diff against the baseline**: {diff['summary']}", ""]
    if diff.get("findings"):
        lines += ["| risk | endpoint | field | change | baseline | sandbox | requests |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {f['risk']} | `{f['endpoint']}` | `{f['path']}` | {f['kind']} | "
                  f"`{f['baseline']}` | `{f['sandbox']}` | {f['raw']}/{f['samples']} |"
                  for f in diff["findings"][:30]]
    skipped = diff.get("skipped") or {}
    if skipped or diff.get("note"):
        lines.append("")
    lines += [f"- not replayed: {reason} ({count})" for reason, count in skipped.items()]
    if diff.get("note"):
        lines.append(f"- note: {diff['note']}")
    return lines


def leak_sentence(leak: Mapping[str, Any], quote: str = "") -> str:
    """`orders@sb` (fork of orders) called `pricing` (/quote) without the key, while serving
    GET /buy; trace …: one line for reports, older records (no process) too."""
    q = quote
    process = leak.get("process") or leak["service"]
    who = f"{q}{process}{q}"
    if process != leak["service"] and "@" in process:
        who += f" (fork of {leak['service']})"
    probable = "probably " if leak.get("certainty") == "probable" else ""
    line = f"{who} {probable}called {q}{leak['lost_at']}{q} ({leak['path']}) without the key"
    if leak.get("serving"):
        line += f", while serving {leak['serving']}"
    if leak.get("trace_id"):
        line += f"; trace {q}{leak['trace_id']}{q}"
    else:
        line += " (no trace: found by the calling process)"
    return line


def forks_reached(hops: Iterable[Hop], keys: set[str], forks: Sequence[str]) -> dict[str, int]:
    """How many hops with one of `keys` each fork (`service@sandbox`) served."""
    counts = dict.fromkeys(forks, 0)
    for hop in hops:
        if hop.routing_key in keys and hop.destination != "baseline" and hop.status >= 200 \
                and hop.status != 503:
            name = f"{hop.service}@{hop.destination}"
            if name in counts:
                counts[name] += 1
    return counts


def fork_responses(hops: Iterable[Hop], keys: set[str],
                   forks: Sequence[str]) -> dict[str, dict[str, int]]:
    """Status classes each fork answered with (`{"pricing@sb": {"2xx": 3, "5xx": 1}}`): a fork
    that answers 5xx without logging anything still shows up in the report."""
    out: dict[str, dict[str, int]] = {fork: {} for fork in forks}
    for hop in hops:
        if hop.routing_key in keys and hop.destination != "baseline":
            name = f"{hop.service}@{hop.destination}"
            if name in out:
                # A gRPC error travels in a 200 answer's trailers: it is its own class.
                cls = f"{hop.status // 100}xx" if not hop.grpc_status else \
                    f"grpc {grpc_code_name(hop.grpc_status)}"
                out[name][cls] = out[name].get(cls, 0) + 1
    return out


def key_conflicts(hops: Iterable[Hop]) -> int:
    """How many of `hops` carried `laneway-key` members with different keys."""
    return sum(1 for hop in hops if hop.key_conflict)


def verdict_of(exit_code: int | None, reached: Mapping[str, int], *,
               allow_unreached: bool) -> Verdict:
    """`passed` only if the command passed and every fork was reached at least once."""
    if exit_code != 0:
        return "failed"
    if all(reached.values()) or allow_unreached:
        return "passed"
    return "vacuous"


def command_environment(base: Mapping[str, str], key: str, run_id: str, run_dir: Path,
                        proxy_url: str, sandbox: str | None) -> dict[str, str]:
    """A run's command's environment, wherever it runs (the daemon's, a client's for a
    cluster): `base` with the routing key, the baggage, the run's id and folder, the injecting
    proxy (for local services too: `NO_PROXY` emptied, or the key is not added) and pytest
    writing JUnit XML where the report looks for it, however it is invoked."""
    env = dict(base)
    env.update(LANEWAY_ROUTING_KEY=key, LANEWAY_BAGGAGE=baggage_value(key),
               LANEWAY_RUN_DIR=str(run_dir), LANEWAY_JUNIT_XML=str(run_dir / "junit.xml"),
               HTTP_PROXY=proxy_url, http_proxy=proxy_url, NO_PROXY="", no_proxy="")
    env[RUN_ID_ENV] = run_id
    if sandbox:
        env["LANEWAY_SANDBOX"] = sandbox
    addopts = env.get("PYTEST_ADDOPTS", "")
    env["PYTEST_ADDOPTS"] = f"{addopts} --junitxml={run_dir / 'junit.xml'}".strip()
    return env


def new_report(run_id: str, sandbox: str | None, routegroup: str | None, key: str,
               command: list[str] | str, forks: Sequence[str], note: str,
               allow_unreached: bool, **extra: Any) -> dict[str, Any]:
    """A run's report as it starts (`running`, nothing found yet), the same fields wherever the
    run is kept (the daemon's store, a cluster's operator); `extra`: what that place adds."""
    return {
        "id": run_id, "sandbox": sandbox, "routegroup": routegroup, "routing_key": key,
        "command": command,
        "command_line": command if isinstance(command, str) else shlex.join(command),
        "status": "running", "verdict": "running", "exit_code": None, "timed_out": False,
        "duration_s": 0.0, "started_at": time.time(), "finished_at": None,
        "forks_reached": dict.fromkeys(forks, 0), "hops": 0, "key_conflicts": 0,
        "fork_responses": {fork: {} for fork in forks}, "leaks": [], "fork_errors": [],
        "failures": [], "tests": None, "output_tail": [], "note": note,
        "allow_unreached": allow_unreached, **extra,
    }


def hop_findings(hops: Sequence[Hop], key: str, forks: Sequence[str]) -> dict[str, Any]:
    """What a run's hops say (`hops`: every hop of the run's window, keyed or not): forks
    reached, how each answered, conflicting keys, captures and leaks. The local control plane
    and the operator make the same part of a report with it."""
    keyed = [h for h in hops if h.routing_key == key]
    traces = {h.trace_id for h in keyed if h.trace_id}
    related = [h for h in hops if h.trace_id in traces]
    untraced = [h for h in keyed if not h.trace_id]
    return {
        "forks_reached": forks_reached(keyed, {key}, forks), "hops": len(keyed),
        # Hops of the run's traces whose baggage carried two keys (core.baggage).
        "key_conflicts": key_conflicts([*related, *untraced]),
        "captured": sum(1 for h in keyed if h.capture is not None),
        "fork_responses": fork_responses(keyed, {key}, forks),
        # All hops of the run's window: leaks by caller need the keyless ones too.
        "leaks": [leak.to_json() for leak in find_leaks(hops, {key})],
    }


_PYTEST_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)(?: - (.*))?$")


def failed_tests(junit: str | None, output: Iterable[str]) -> tuple[
        dict[str, int] | None, list[dict[str, str]]]:
    """(totals, failed tests) from the run's JUnit XML, or, without one (or with no failure in
    it), from pytest's `FAILED name - message` summary lines of its output."""
    tests: dict[str, int] | None = None
    failures: list[dict[str, str]] = []
    if junit:
        try:
            tests, failures = parse_junit(junit)
        except (ET.ParseError, ValueError):  # a file half-written when the command died
            tests = None
    if not failures:
        for line in output:
            match = _PYTEST_FAILED.match(line)
            if match:
                failures.append({"name": match.group(1), "message": match.group(2) or ""})
    return tests, failures[:50]


def unreached_reason(found: Mapping[str, Any]) -> str:
    """Why a fork was not reached, from what the run saw (`hop_findings`): the key never sent,
    lost on the way (the leak says where), or carried but never routed to the fork's
    service."""
    if found["leaks"]:
        return "the key was lost on the way: " + leak_sentence(found["leaks"][0])
    if not found["hops"]:
        return ("no request carried the routing key (send LANEWAY_BAGGAGE as the `baggage` "
                "header, or use a client that honours HTTP_PROXY)")
    return ("requests carried the key, but none of them called the forked service (does the "
            "test exercise it?)")


def is_error_line(line: str) -> bool:
    return _ERROR_RE.search(line) is not None


def parse_junit(text: str) -> tuple[dict[str, int], list[dict[str, str]]]:
    """Totals and failed tests (name, message) from a JUnit XML document."""
    # The file is written by the user's own test command in their own checkout.
    root = ET.fromstring(text)  # noqa: S314
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failures: list[dict[str, str]] = []
    for suite in suites:
        for case in suite.iter("testcase"):
            totals["tests"] += 1
            name = "::".join(p for p in (case.get("classname", ""), case.get("name", "")) if p)
            for kind in ("failure", "error"):
                node = case.find(kind)
                if node is not None:
                    totals["failures" if kind == "failure" else "errors"] += 1
                    message = node.get("message") or (node.text or "").strip().splitlines()[-1:]
                    if isinstance(message, list):
                        message = message[0] if message else ""
                    failures.append({"name": name, "message": message[:500]})
            if case.find("skipped") is not None:
                totals["skipped"] += 1
    return totals, failures


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as one pastes it into a pull request."""
    icon = {"passed": "✅", "failed": "❌", "vacuous": "⚠️", "running": "⏳",
            "interrupted": "⏹️"}.get(
        str(report["verdict"]), "❓")
    target = f"sandbox `{report['sandbox']}`" if report.get("sandbox") else \
        f"route group `{report.get('routegroup')}`"
    lines = [
        f"### {icon} laneway run `{report['id']}`: {report['verdict']}",
        "",
        f"`{report['command_line']}` against {target} (routing key `{report['routing_key']}`): "
        f"exit code {report['exit_code']}, {report['duration_s']:.1f}s, "
        f"{report['hops']} hops.",
        "",
    ]
    if report.get("note"):
        lines += [f"> {report['note']}", ""]
    if report.get("key_conflicts"):
        lines += [f"> {key_conflict_note(int(report['key_conflicts']))}", ""]
    responses = report.get("fork_responses") or {}
    lines += ["| fork | requests reached | answers |", "|---|---|---|"]
    lines += [f"| `{fork}` | {count} | "
              f"{', '.join(f'{c}: {n}' for c, n in sorted(responses.get(fork, {}).items()))} |"
              for fork, count in report["forks_reached"].items()]
    if report.get("failures"):
        lines += ["", "**Failed tests**", ""]
        lines += [f"- `{f['name']}`: {f['message']}" for f in report["failures"][:20]]
    diff = report.get("diff")
    if diff:
        lines += ["", *render_diff_markdown(diff)]
    if report.get("leaks"):
        lines += ["", "**Propagation leaks** (the routing key was dropped)", ""]
        lines += [f"- {leak_sentence(leak, '`')}" for leak in report["leaks"][:20]]
    if report.get("fork_errors"):
        lines += ["", "**Errors logged by the forks during the run**", "", "```"]
        lines += [*list(report["fork_errors"][:30]), "```"]
    if report.get("output_tail"):
        lines += ["", "<details><summary>output (tail)</summary>", "", "```"]
        lines += [*list(report["output_tail"]), "```", "</details>"]
    return "\n".join(lines) + "\n"
