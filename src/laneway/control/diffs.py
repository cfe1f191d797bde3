"""Replaying requests against the baseline and a sandbox, and diffing the answers (issue 13).

Each request is sent three times through the router it was sent to: without the key (the
baseline's first answer), with the sandbox's key (the candidate), and without the key again
(the baseline's second answer, whose differences from the first are the noise). The candidate
goes between the two baseline answers, so that a clock or counter moves between the baseline
answers as often as between baseline and candidate. `core.diff` compares and classifies.

Only idempotent methods are replayed unless `unsafe` is asked for: a replayed POST writes to
the shared baseline's data twice more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx

from laneway.core.baggage import baggage_value
from laneway.core.diff import Answer, Thresholds, classify, endpoint_of
from laneway.core.spec import DiffSettings

__all__ = ["IDEMPOTENT", "captured_requests", "replay_diff", "thresholds_of"]

IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS"))
EXAMPLE_BODY = 1000  # bytes of each answer shown with a finding's example request
_SKIP = frozenset(("baggage", "traceparent", "tracestate", "content-length", "host",
                   "connection", "transfer-encoding"))


def _answer(resp: httpx.Response) -> Answer:
    return Answer(resp.status_code, {k.lower(): v for k, v in resp.headers.items()},
                  resp.content)


async def replay_diff(requests: Sequence[dict[str, Any]], key: str, *, unsafe: bool = False,
                      thresholds: Thresholds | None = None,
                      timeout: float = 10.0) -> dict[str, Any]:
    """The diff report of `requests` ({method, url, headers, body}) between the baseline and
    the sandbox whose key is `key`."""
    samples: list[tuple[str, Answer, Answer, Answer]] = []
    sent: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    failed = 0
    async with httpx.AsyncClient(trust_env=False, timeout=timeout) as client:
        for request in requests:
            method = str(request["method"]).upper()
            if request.get("skip"):
                skipped[str(request["skip"])] += 1
                continue
            if request.get("body") is None:
                skipped["body not kept (chunked or over 64 KiB)"] += 1
                continue
            if method not in IDEMPOTENT and not unsafe:
                skipped[f"{method}: not replayed without --unsafe (it would write twice "
                        "more)"] += 1
                continue
            headers = [(k, v) for k, v in request.get("headers", []) if k.lower() not in _SKIP]
            body = str(request.get("body") or "").encode("latin-1")
            url = str(request["url"])
            try:
                answers = []
                for keyed in (False, True, False):
                    sending = [*headers, ("baggage", baggage_value(key))] if keyed else headers
                    answers.append(_answer(await client.request(method, url, headers=sending,
                                                                content=body or None)))
            except httpx.HTTPError:
                failed += 1
                continue
            path = httpx.URL(url).raw_path.decode("latin-1")
            endpoint = endpoint_of(method, path)
            if request.get("service"):
                endpoint = f"{request['service']}: {endpoint}"  # several services replayed
            samples.append((endpoint, answers[0], answers[2], answers[1]))
            sent.append({"method": method, "url": url})
    limits = thresholds or Thresholds()
    findings = classify(samples, limits)
    loud = [f for f in findings if f.risk != "green"]
    red = sum(1 for f in loud if f.risk == "red")
    endpoints = len({s[0] for s in samples})
    changed = len({f.endpoint for f in loud})
    summary = (f"{_count(len(samples), 'request')} to {_count(endpoints, 'endpoint')} "
               "replayed: "
               + (f"{red} red and {len(loud) - red} yellow findings on "
                  f"{_count(changed, 'endpoint')}"
                  if loud else "no difference beyond the baseline's own noise"))
    return {
        "summary": summary,
        "replayed": len(samples),
        "skipped": dict(skipped),
        "failed": failed,
        "endpoints": endpoints,
        "red": red,
        "yellow": len(loud) - red,
        "thresholds": {"relative": limits.relative, "absolute": limits.absolute},
        "green": len(findings) - len(loud),
        "findings": [{**f.to_json(), "example": _example(sent, samples, f.example)}
                     for f in loud[:200]],
        "noise": [f.to_json() for f in findings if f.risk == "green"][:50],
    }


def _example(sent: Sequence[dict[str, Any]],
             samples: Sequence[tuple[str, Answer, Answer, Answer]], index: int) -> dict[str, Any]:
    """A finding's example request with the baseline's (first) and the sandbox's answers."""
    _, primary, _, candidate = samples[index]
    return {**sent[index], "baseline": _shown(primary), "sandbox": _shown(candidate)}


def thresholds_of(settings: DiffSettings, relative: float | None = None,
                  absolute: float | None = None) -> Thresholds:
    """The noise rule: laneway.yaml's `diff`, where a request does not set its own."""
    return Thresholds(settings.relative if relative is None else relative,
                      settings.absolute if absolute is None else absolute)


def _shown(answer: Answer) -> dict[str, Any]:
    """An answer for a finding's example: its status and the start of its body."""
    body = answer.body[:EXAMPLE_BODY].decode("utf-8", "replace")
    return {"status": answer.status, "content_type": answer.content_type,
            "body": body + ("…" if len(answer.body) > EXAMPLE_BODY else "")}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def captured_requests(captures: Sequence[dict[str, Any]], ports: dict[str, int],
                      headers: Sequence[tuple[str, str]] = (),
                      host: str = "127.0.0.1") -> tuple[list[dict[str, Any]], str]:
    """Replayable requests from captured exchanges, to the service's public port, and a note
    on what they lack. Credentials were stored hashed: they are left out, unless `headers`
    gives them (a header given replaces the captured one of that name). A cut body makes a
    request not replayable; so does a gRPC call (its answer's status is in HTTP/2 trailers,
    which the replay does not read yet)."""
    given = {name.lower() for name, _ in headers}
    lacking: set[str] = set()
    out = []
    for capture in captures:
        port = ports.get(capture["service"])
        if port is None:
            continue
        request = capture["request"]
        kept = []
        for name, value in request["headers"]:
            if name.lower() in given:
                continue
            if value.startswith("redacted:"):
                lacking.add(name.lower())
                continue
            kept.append((name, value))
        out.append({
            "service": capture["service"],
            "method": request["method"],
            "url": f"http://{host}:{port}{request['target']}",
            "headers": [*kept, *headers],
            "body": None if capture.get("truncated") else request["body"],
            **({"skip": "gRPC call: not replayed yet (its status is in HTTP/2 trailers)"}
               if capture.get("grpc") else {}),
        })
    note = ""
    if lacking:
        names = ", ".join(sorted(lacking))
        note = (f"captured requests carried {names}, which captures keep only as a hash: they "
                "were replayed without them, so answers that need them may differ from what "
                "the callers got. Give them with --header 'Name: value' (MCP: headers).")
    return out, note
