"""What a sandbox changed in the answers: structural differences, the baseline's own noise, and
a verdict per finding (issue 13's pure core; the capture and replay around it come later).

The same request is answered three times: twice by the baseline (`primary`, `secondary`) and
once by the sandbox (`candidate`), as twitter/diffy does. A difference between the two baseline
answers is noise (a timestamp, a random id); a difference between primary and candidate is raw.
A field path is reported only when its raw differences are not explained by its noise:

    significant  ⇔  raw > 0
                 and (raw - noise) / raw      > relative   (default 0.20)
                 and (raw - noise) / samples  > absolute   (default 0.0003)

(diffy's defaults, 20 % and 0.03 %). Findings are classified by risk, as Keploy ranks them:

- red: the status class changed (2xx → 5xx), a field the baseline sends is missing, a field's
  JSON type changed, the content type changed;
- yellow: values changed beyond the noise (a number, a string, an array's length, a header,
  a text or binary body);
- green: differences the noise explains, and fields only the sandbox adds.

Noise is learned only as well as the two baseline answers bracket the candidate's: a replay
should ask primary, candidate, secondary in that order, so that a clock with second precision
moves between the baseline answers as often as between primary and candidate.

Everything here is a pure function of its inputs (property tests in tests/unit/test_diff.py).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "COMPARED_HEADERS",
    "Answer",
    "Difference",
    "Finding",
    "Thresholds",
    "classify",
    "diff_answers",
    "diff_json",
    "endpoint_of",
    "significant",
]

Kind = Literal["status", "header", "missing", "extra", "type", "value", "length", "text",
               "binary", "content_type"]
Risk = Literal["red", "yellow", "green"]

# Headers whose change means something to a client; the rest (date, server, etag, lengths,
# laneway's own) differ between any two answers.
COMPARED_HEADERS = ("location", "cache-control", "content-encoding", "vary", "allow",
                    "www-authenticate", "content-language")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)  # lowercased names
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Difference:
    path: str  # `status`, `header:location`, `$.items[0].price`, `body`
    kind: Kind
    left: Any = None
    right: Any = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    relative: float = 0.20
    absolute: float = 0.0003


@dataclass(frozen=True, slots=True)
class Finding:
    endpoint: str
    path: str
    kind: Kind
    risk: Risk
    raw: int  # requests whose candidate answer differed here
    noise: int  # requests whose two baseline answers differed here
    samples: int
    example: int = -1  # the first sample (by position) whose candidate differed here
    left: Any = None  # what the baseline answered there, in that sample
    right: Any = None  # what the sandbox answered

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "path": self.path, "kind": self.kind,
                "risk": self.risk, "raw": self.raw, "noise": self.noise,
                "samples": self.samples, "baseline": _short(self.left),
                "sandbox": _short(self.right)}


def _short(value: Any) -> Any:
    text = json.dumps(value, default=str)
    return value if len(text) <= 200 else text[:197] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def diff_json(left: Any, right: Any, path: str = "$") -> list[Difference]:
    """Field-by-field differences between two JSON values (objects by key, arrays by index)."""
    lt, rt = _type_name(left), _type_name(right)
    if lt != rt:
        return [Difference(path, "type", lt, rt)]
    if lt == "object":
        out: list[Difference] = []
        for key in left:
            sub = f"{path}.{key}"
            if key not in right:
                out.append(Difference(sub, "missing", left[key], None))
            else:
                out.extend(diff_json(left[key], right[key], sub))
        out.extend(Difference(f"{path}.{key}", "extra", None, right[key])
                   for key in right if key not in left)
        return out
    if lt == "array":
        out = []
        if len(left) != len(right):
            out.append(Difference(path, "length", len(left), len(right)))
        for i, (a, b) in enumerate(zip(left, right, strict=False)):
            out.extend(diff_json(a, b, f"{path}[{i}]"))
        return out
    if left != right:
        return [Difference(path, "value", left, right)]
    return []


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def diff_answers(left: Answer, right: Answer) -> list[Difference]:
    """Status, the compared headers, and the body by its content type."""
    out: list[Difference] = []
    if left.status != right.status:
        out.append(Difference("status", "status", left.status, right.status))
    if left.content_type != right.content_type:
        out.append(Difference("header:content-type", "content_type", left.content_type,
                              right.content_type))
    for name in COMPARED_HEADERS:
        a, b = left.headers.get(name), right.headers.get(name)
        if a != b:
            out.append(Difference(f"header:{name}", "header", a, b))
    if left.body == right.body:
        return out
    kind = left.content_type
    if _is_json(kind) and _is_json(right.content_type):
        try:
            return out + diff_json(json.loads(left.body), json.loads(right.body))
        except ValueError:
            pass  # not JSON after all: compared as text below
    if kind.startswith("text/") or _is_json(kind) or kind in ("application/xml", ""):
        try:
            a_lines = left.body.decode().splitlines()
            b_lines = right.body.decode().splitlines()
        except UnicodeDecodeError:
            a_lines = b_lines = []
        else:
            changed = [line for line in difflib.unified_diff(a_lines, b_lines, lineterm="", n=0)
                       if line[:1] in "+-" and line[:3] not in ("+++", "---")]
            return [*out, Difference("body", "text", len(a_lines),
                                     {"lines_changed": len(changed), "first": changed[:2]})]
    return [*out, Difference("body", "binary", hashlib.sha256(left.body).hexdigest()[:16],
                             hashlib.sha256(right.body).hexdigest()[:16])]


_ID_SEGMENT = re.compile(
    r"^(\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{16,})$",
    re.IGNORECASE)


def endpoint_of(method: str, target: str) -> str:
    """`GET /users/{id}`: the query dropped, numeric, UUID and long hex segments as `{id}`, so
    that requests to the same handler are counted together."""
    path = target.split("?", 1)[0] or "/"
    segments = ["{id}" if _ID_SEGMENT.match(seg) else seg for seg in path.split("/")]
    return f"{method.upper()} {'/'.join(segments)}"


def significant(raw: int, noise: int, samples: int, thresholds: Thresholds) -> bool:
    """Whether `raw` differences at a path are more than its `noise` explains (module doc)."""
    if raw <= 0 or samples <= 0:
        return False
    excess = raw - noise
    return excess / raw > thresholds.relative and excess / samples > thresholds.absolute


_RED_KINDS = frozenset(("missing", "type", "content_type"))


def _risk(kind: Kind, path: str, examples: Sequence[Difference]) -> Risk:
    if kind == "status":
        classes = {(d.left // 100, d.right // 100) for d in examples
                   if isinstance(d.left, int) and isinstance(d.right, int)}
        return "red" if any(a != b for a, b in classes) else "yellow"
    if kind in _RED_KINDS:
        return "red"
    if kind == "extra":
        return "green"
    return "yellow"


def classify(samples: Iterable[tuple[str, Answer, Answer, Answer]],
             thresholds: Thresholds | None = None) -> list[Finding]:
    """Findings from (endpoint, primary, secondary, candidate) triples: every path where the
    candidate differed, with its risk; paths the noise explains are green."""
    limits = thresholds or Thresholds()
    counts: dict[str, int] = {}
    raw: dict[tuple[str, str, Kind], list[Difference]] = {}
    first: dict[tuple[str, str, Kind], int] = {}
    noise: dict[tuple[str, str], int] = {}
    for index, (endpoint, primary, secondary, candidate) in enumerate(samples):
        counts[endpoint] = counts.get(endpoint, 0) + 1
        for diff in {(d.path, d.kind): d for d in diff_answers(primary, candidate)}.values():
            raw.setdefault((endpoint, diff.path, diff.kind), []).append(diff)
            first.setdefault((endpoint, diff.path, diff.kind), index)
        for path in {d.path for d in diff_answers(primary, secondary)}:
            noise[(endpoint, path)] = noise.get((endpoint, path), 0) + 1
    findings = []
    for (endpoint, path, kind), diffs in raw.items():
        n = counts[endpoint]
        seen_noise = noise.get((endpoint, path), 0)
        risk: Risk = _risk(kind, path, diffs) \
            if significant(len(diffs), seen_noise, n, limits) else "green"
        findings.append(Finding(endpoint, path, kind, risk, len(diffs), seen_noise, n,
                                first[(endpoint, path, kind)], diffs[0].left, diffs[0].right))
    order = {"red": 0, "yellow": 1, "green": 2}
    return sorted(findings, key=lambda f: (order[f.risk], f.endpoint, f.path))
