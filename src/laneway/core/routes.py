"""The routing table, its versioned changes, and the routing decision.

The control plane builds a `RouteTable` from the store and the runtime; routers receive it as a
snapshot plus changes (`RouteChanges`), versioned, and keep serving the last table they have when
the control plane is down. The decision (`decide`) is a dict hit on (service, key): its cost does
not grow with the number of sandboxes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ForkRoute",
    "RouteChanges",
    "RouteTable",
    "Upstream",
    "apply_changes",
    "decide",
    "diff_tables",
]


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int
    # Hashed once: the router looks an upstream up in its pool and its in-flight counts on
    # every request, and a dataclass hashes its fields anew each time.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.host, self.port)))

    def __hash__(self) -> int:
        return self._hash

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Upstream:
        return cls(str(data["host"]), int(data["port"]))


@dataclass(frozen=True, slots=True)
class ForkRoute:
    """Where one routing key goes at one service.

    `ready` false means: answer 503 with `reason` (a fork that is starting, crashed or unhealthy,
    or a route-group conflict); never fall back to the baseline silently.
    """

    service: str
    sandbox: str
    upstream: Upstream | None
    ready: bool
    reason: str = ""
    fork: str = ""  # the unit serving the route, for hop records and error bodies

    @property
    def served_by(self) -> str:
        return f"{self.service}@{self.sandbox}"

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "sandbox": self.sandbox,
            "upstream": self.upstream.to_json() if self.upstream else None,
            "ready": self.ready,
            "reason": self.reason,
            "fork": self.fork,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ForkRoute:
        upstream = data.get("upstream")
        return cls(
            service=str(data["service"]),
            sandbox=str(data["sandbox"]),
            upstream=Upstream.from_json(upstream) if upstream else None,
            ready=bool(data["ready"]),
            reason=str(data.get("reason", "")),
            fork=str(data.get("fork", "")),
        )


@dataclass(slots=True)
class RouteTable:
    """Baseline upstream per service, and fork routes per service and routing key."""

    version: int = 0
    baseline: dict[str, Upstream] = field(default_factory=dict)
    forks: dict[str, dict[str, ForkRoute]] = field(default_factory=dict)
    # Routing keys whose requests every router captures, at every service (a sandbox with
    # `capture: true`, a run with `--capture`): the exchanges `laneway diff` can replay.
    captured: frozenset[str] = frozenset()
    # Who connects from where, in a cluster (router mode): pod IP -> `service` (a baseline pod)
    # or `service@sandbox` (a fork's), so that sidecars name the caller of every hop as the
    # local router does from the socket's process. Empty locally.
    callers: dict[str, str] = field(default_factory=dict)
    # Sandbox and route group names -> their routing keys: the preview edge turns the host
    # `<name>--<service>.localhost` into the key, and knows a deleted name from a live one.
    names: dict[str, str] = field(default_factory=dict)

    def route_count(self) -> int:
        return sum(len(keys) for keys in self.forks.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "baseline": {name: up.to_json() for name, up in self.baseline.items()},
            "forks": {
                service: {key: route.to_json() for key, route in keys.items()}
                for service, keys in self.forks.items()
            },
            "captured": sorted(self.captured),
            **({"callers": dict(sorted(self.callers.items()))} if self.callers else {}),
            **({"names": dict(sorted(self.names.items()))} if self.names else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RouteTable:
        return cls(
            version=int(data["version"]),
            baseline={k: Upstream.from_json(v) for k, v in data["baseline"].items()},
            forks={
                service: {key: ForkRoute.from_json(r) for key, r in keys.items()}
                for service, keys in data["forks"].items()
            },
            captured=frozenset(str(k) for k in data.get("captured", ())),  # older feeds: none
            callers={str(k): str(v) for k, v in (data.get("callers") or {}).items()},
            names={str(k): str(v) for k, v in (data.get("names") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class RouteChanges:
    """What changed between two table versions; applying it to `since` yields `version`."""

    since: int
    version: int
    baseline: dict[str, Upstream | None]  # None: the service is gone
    upserts: dict[tuple[str, str], ForkRoute]
    removals: frozenset[tuple[str, str]]
    captured: frozenset[str] | None = None  # the new set of captured keys; None: unchanged
    callers: dict[str, str] | None = None  # the new callers by address; None: unchanged
    names: dict[str, str] | None = None  # the new names -> keys; None: unchanged

    @property
    def empty(self) -> bool:
        return not (self.baseline or self.upserts or self.removals or self.captured is not None
                    or self.callers is not None or self.names is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "version": self.version,
            "baseline": {k: (v.to_json() if v else None) for k, v in self.baseline.items()},
            "upserts": [
                {"service": s, "key": k, "route": r.to_json()}
                for (s, k), r in sorted(self.upserts.items())
            ],
            "removals": [{"service": s, "key": k} for s, k in sorted(self.removals)],
            **({"captured": sorted(self.captured)} if self.captured is not None else {}),
            **({"callers": dict(sorted(self.callers.items()))}
               if self.callers is not None else {}),
            **({"names": dict(sorted(self.names.items()))} if self.names is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RouteChanges:
        return cls(
            since=int(data["since"]),
            version=int(data["version"]),
            baseline={
                k: (Upstream.from_json(v) if v else None) for k, v in data["baseline"].items()
            },
            upserts={
                (u["service"], u["key"]): ForkRoute.from_json(u["route"]) for u in data["upserts"]
            },
            removals=frozenset((r["service"], r["key"]) for r in data["removals"]),
            captured=None if data.get("captured") is None
            else frozenset(str(k) for k in data["captured"]),
            callers=None if data.get("callers") is None
            else {str(k): str(v) for k, v in data["callers"].items()},
            names=None if data.get("names") is None
            else {str(k): str(v) for k, v in data["names"].items()},
        )


def diff_tables(old: RouteTable, new: RouteTable) -> RouteChanges:
    baseline: dict[str, Upstream | None] = {
        name: up for name, up in new.baseline.items() if old.baseline.get(name) != up
    }
    baseline.update({name: None for name in old.baseline if name not in new.baseline})
    upserts: dict[tuple[str, str], ForkRoute] = {}
    for service, keys in new.forks.items():
        before = old.forks.get(service, {})
        for key, route in keys.items():
            if before.get(key) != route:
                upserts[(service, key)] = route
    removals = frozenset(
        (service, key)
        for service, keys in old.forks.items()
        for key in keys
        if key not in new.forks.get(service, {})
    )
    captured = new.captured if new.captured != old.captured else None
    callers = dict(new.callers) if new.callers != old.callers else None
    names = dict(new.names) if new.names != old.names else None
    return RouteChanges(old.version, new.version, baseline, upserts, removals, captured,
                        callers, names)


def apply_changes(table: RouteTable, changes: RouteChanges) -> None:
    """Apply `changes` in place. The per-service dicts are kept (routers hold references)."""
    if changes.since != table.version:
        raise ValueError(f"changes since v{changes.since} do not apply to table v{table.version}")
    for name, upstream in changes.baseline.items():
        if upstream is None:
            table.baseline.pop(name, None)
        else:
            table.baseline[name] = upstream
    for (service, key), route in changes.upserts.items():
        table.forks.setdefault(service, {})[key] = route
    for service, key in changes.removals:
        table.forks.get(service, {}).pop(key, None)
    if changes.captured is not None:
        table.captured = changes.captured
    if changes.callers is not None:
        table.callers = dict(changes.callers)
    if changes.names is not None:
        table.names = dict(changes.names)
    table.version = changes.version


def decide(routes: Mapping[str, ForkRoute], key: str | None) -> ForkRoute | None:
    """The routing decision at one service, in DESIGN.md's order.

    Returns None for the baseline (no key, unknown key, or a key that forks other services only);
    otherwise the fork route, which the caller forwards to when `ready` and answers 503 for when
    not. The order matters: a key that selects a broken fork must never reach the baseline.
    """
    if key is None:
        return None
    return routes.get(key)
