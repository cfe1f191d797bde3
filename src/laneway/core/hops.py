"""Hop records: one request passing one router.

Routers create them on the hot path (so they are plain slotted objects) and hand them over in
batches; the control plane keeps a bounded log of them and answers queries by sandbox and trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from laneway.core.grpc import grpc_code_name

__all__ = ["HOP_PUSH_INTERVAL_S", "ROW_FIELDS", "Hop", "HopRow", "key_conflict_note",
           "status_text", "trace_context"]

# Router sidecars on Kubernetes send their hop records to the operator this often (when they
# have any): one request a second per sidecar, and a run's report waits this long for them.
HOP_PUSH_INTERVAL_S = 1.0
ROW_FIELDS = ("at", "trace_id", "parent_id", "service", "routing_key", "destination", "fork",
              "status", "duration_ms", "method", "path", "error", "key_conflict", "grpc_status",
              "caller", "capture")
# A hop record as routers make, keep and send it: the values of `ROW_FIELDS` in that order (the
# order of `Hop`'s fields, so `Hop(*row)` reads one). A tuple of strings and numbers costs a
# tenth of a `Hop` to make, and CPython's collector stops tracking it at its first pass: a
# router keeping 100,000 of them does not make every full collection walk them.
HopRow = tuple[Any, ...]


@dataclass(slots=True)  # not frozen: routers build one per request, and frozen init is slower
class Hop:
    at: float  # wall-clock start, seconds since the epoch
    trace_id: str
    parent_id: str  # span id of the caller, from `traceparent`
    service: str
    routing_key: str
    destination: str  # "baseline", or the sandbox (or route group) that served it
    fork: str  # the unit that served it, empty for the baseline
    status: int
    duration_ms: float
    method: str
    path: str
    error: str = ""  # why the router answered itself (503/502/504), empty otherwise
    # The request's baggage carried `laneway-key` members with different keys: the router used
    # the last one (core.baggage), but a service's SDK may propagate another.
    key_conflict: bool = False
    # A gRPC call's status (0 OK, 14 UNAVAILABLE, ...), from the response's trailers or the
    # router's own answer; None for plain HTTP. `status` stays the HTTP status (200 for a gRPC
    # answer), except for the router's own gRPC answers, which record the status the same
    # failure has over HTTP (503 fork not ready, 502 refused, 504 deadline): runs and reports
    # read both kinds of hop alike.
    grpc_status: int | None = None
    # Who made the request: `service` (a baseline process), `service@sandbox` (a fork),
    # `external` (a process laneway does not run), or "" where the router cannot tell.
    caller: str = ""
    # The request and response, where the service is captured (router.capture_services):
    # {"request": {method, target, headers, body}, "response": {status, headers, body}},
    # bodies cut at capture_body_bytes, credentials hashed (router/capture.py).
    capture: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "trace_id": self.trace_id,
            "parent_id": self.parent_id,
            "service": self.service,
            "routing_key": self.routing_key,
            "destination": self.destination,
            "fork": self.fork,
            "status": self.status,
            "duration_ms": round(self.duration_ms, 3),
            "method": self.method,
            "path": self.path,
            "error": self.error,
            "key_conflict": self.key_conflict,
            "grpc_status": self.grpc_status,
            "caller": self.caller,
            **({"capture": self.capture} if self.capture is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hop:
        return cls(
            at=float(data["at"]), trace_id=str(data["trace_id"]),
            parent_id=str(data["parent_id"]), service=str(data["service"]),
            routing_key=str(data["routing_key"]), destination=str(data["destination"]),
            fork=str(data["fork"]), status=int(data["status"]),
            duration_ms=float(data["duration_ms"]), method=str(data["method"]),
            path=str(data["path"]), error=str(data.get("error", "")),
            key_conflict=bool(data.get("key_conflict", False)),  # absent in older records
            grpc_status=None if data.get("grpc_status") is None else int(data["grpc_status"]),
            caller=str(data.get("caller", "")),
            capture=data.get("capture"),
        )

    def to_row(self) -> tuple[Any, ...]:
        """The record as a row of `ROW_FIELDS`: batches sent over the network as rows encode in
        half the time and size of objects (a router's event loop does the encoding). A tuple
        of strings and numbers, which the collector stops tracking (`dataplane.HopBuffer`)."""
        return (self.at, self.trace_id, self.parent_id, self.service, self.routing_key,
                self.destination, self.fork, self.status, round(self.duration_ms, 3),
                self.method, self.path, self.error, self.key_conflict, self.grpc_status,
                self.caller, self.capture)

    @classmethod
    def from_row(cls, fields: Sequence[str], row: Sequence[Any]) -> Hop:
        if len(row) != len(fields):
            raise ValueError(f"a row of {len(row)} values for {len(fields)} fields")
        return cls.from_json(dict(zip(fields, row, strict=True)))


def status_text(status: int, grpc_status: int | None) -> str:
    """A hop's outcome for tables: `200`, or `200 OK` / `503 UNAVAILABLE` for a gRPC call."""
    if grpc_status is None:
        return str(status)
    return f"{status} {grpc_code_name(grpc_status)}"


def key_conflict_note(count: int) -> str:
    """The sentence that reports `count` hops with conflicting keys (empty for none)."""
    if count <= 0:
        return ""
    hops = "1 hop" if count == 1 else f"{count} hops"
    return (f"{hops} carried two different laneway-key members; the router used the last one, "
            "as OpenTelemetry does. Whatever adds the second member should replace the first.")


def trace_context(traceparent: bytes) -> tuple[str, str]:
    """(trace id, parent span id) from a W3C `traceparent` value, or empty strings."""
    # version-traceid(32 hex)-parentid(16 hex)-flags: 00-4bf9...-00f0...-01
    value = traceparent.strip()
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-":
        return "", ""
    try:
        trace_id = value[3:35].decode("ascii")
        parent_id = value[36:52].decode("ascii")
    except UnicodeDecodeError:
        return "", ""
    return trace_id.lower(), parent_id.lower()
