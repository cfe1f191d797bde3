"""Router mode's routing table, from what the cluster holds (pure).

The operator publishes it on its routes feed; the router sidecars follow it. Every fact comes
from objects the operator made or marked, so the table is level-triggered like the rest:

- baseline: each Service port marked `laneway.dev/router=on` is served by the sidecar in its
  pods, which forwards to the application beside it (127.0.0.1, the original targetPort);
- forks: each Sandbox with a routing key, through its fork Services (`laneway.dev/fork-of`)
  at their cluster IP (no DNS lookup on the request path), ready once the fork Deployment has an
  available replica (before that, 503 with the reason; never the baseline);
- route groups: the group's key to the one member forking a service, or a 503 naming the
  members when several fork it (as the local router answers);
- callers: each running pod's IP, named as the local router names processes: `pricing.shop`
  for a baseline pod behind the router, `pricing.shop@sandbox` for a fork's pod, so that the
  sidecars record who made each request (leaks by caller).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from laneway.core.kubernetes.groups import group_members
from laneway.core.kubernetes.objects import (
    FORK_OF_LABEL,
    ROUTER_LABEL,
    SANDBOX_LABEL,
    TARGET_PORTS_ANNOTATION,
    RenderError,
    namespace_of,
    selects,
    table_service,
)
from laneway.core.routes import ForkRoute, RouteTable, Upstream

__all__ = ["build_route_table"]


def _ns(obj: Mapping[str, Any]) -> str:
    return namespace_of(obj, "default")


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _key_of(obj: Mapping[str, Any]) -> str | None:
    key = (obj.get("status") or {}).get("routingKey")
    return str(key) if key and not obj.get("metadata", {}).get("deletionTimestamp") else None


def _fork_routes(sandbox: Mapping[str, Any], mine: list[Mapping[str, Any]],
                 injected: Mapping[tuple[str, str], Mapping[str, Any]],
                 routed: Collection[str]) -> dict[str, ForkRoute]:
    """The routes of one sandbox, from its own objects (`mine`)."""
    name = str(sandbox["metadata"]["name"])
    routes: dict[str, ForkRoute] = {}
    deployments = [o for o in mine if o.get("kind") == "Deployment"]
    for svc in (o for o in mine if o.get("kind") == "Service"):
        base = injected.get((_ns(svc), str(_labels(svc).get(FORK_OF_LABEL))))
        if base is None:
            continue  # not behind a router (yet): nothing reads a route for it
        selector = svc.get("spec", {}).get("selector") or {}
        dep = next((d for d in deployments if _ns(d) == _ns(svc) and all(
            d["spec"]["template"]["metadata"].get("labels", {}).get(k) == v
            for k, v in selector.items())), None)
        available = int(((dep or {}).get("status") or {}).get("availableReplicas") or 0)
        cluster_ip = svc.get("spec", {}).get("clusterIP")
        fork = str(dep["metadata"]["name"]) if dep else ""
        reason = ""
        if dep is None:
            reason = f"sandbox {name}: the fork Deployment of {svc['metadata']['name']} is gone"
        elif not available:
            reason = f"sandbox {name}: fork {fork} has no available pod yet"
        elif not cluster_ip or cluster_ip == "None":
            reason = f"sandbox {name}: Service {svc['metadata']['name']} has no cluster IP yet"
        base_ports = {int(p["port"]): p for p in base["spec"].get("ports") or []}
        for port in svc.get("spec", {}).get("ports") or []:
            base_port = base_ports.get(int(port["port"]))
            if base_port is None:
                continue
            service = table_service(base, base_port)
            if service not in routed:
                continue  # a port the router does not stand in front of
            upstream = Upstream(str(cluster_ip), int(port["port"])) if not reason else None
            routes[service] = ForkRoute(service, name, upstream, not reason, reason, fork)
    return routes


def _pod_ips(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Running") or pod["metadata"].get("deletionTimestamp"):
        return []
    ips = [str(p["ip"]) for p in status.get("podIPs") or [] if p.get("ip")]
    return ips or ([str(status["podIP"])] if status.get("podIP") else [])


def _callers(objects: list[Mapping[str, Any]],
             injected: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, str]:
    """Pod IP -> caller name, for the pods of the Services behind the router and their forks."""
    pods = [o for o in objects if o.get("kind") == "Pod"]
    out: dict[str, str] = {}
    if not pods:
        return out
    for (ns, name), svc in injected.items():
        selector = svc.get("spec", {}).get("selector") or {}
        for pod in pods:
            labels = _labels(pod)
            if _ns(pod) == ns and SANDBOX_LABEL not in labels and selects(selector, labels):
                out.update(dict.fromkeys(_pod_ips(pod), f"{name}.{ns}"))
    for svc in objects:
        fork_of = _labels(svc).get(FORK_OF_LABEL)
        if svc.get("kind") != "Service" or not fork_of or (_ns(svc), fork_of) not in injected:
            continue
        sandbox = _labels(svc).get(SANDBOX_LABEL, "")
        selector = svc.get("spec", {}).get("selector") or {}
        for pod in pods:
            if _ns(pod) == _ns(svc) and _labels(pod).get(SANDBOX_LABEL) == sandbox \
                    and selects(selector, _labels(pod)):
                out.update(dict.fromkeys(_pod_ips(pod), f"{fork_of}.{_ns(svc)}@{sandbox}"))
    return out


def build_route_table(sandboxes: Iterable[Mapping[str, Any]],
                      route_groups: Iterable[Mapping[str, Any]],
                      objects: Iterable[Mapping[str, Any]]) -> RouteTable:
    """The table for every router sidecar of the cluster (version left to the feed)."""
    objects = list(objects)
    table = RouteTable()
    injected: dict[tuple[str, str], Mapping[str, Any]] = {}
    owned: dict[tuple[str, str], list[Mapping[str, Any]]] = {}  # one pass, not one per sandbox
    for obj in objects:
        if SANDBOX_LABEL in _labels(obj):
            owned.setdefault((_ns(obj), str(_labels(obj)[SANDBOX_LABEL])), []).append(obj)
    for svc in objects:
        if svc.get("kind") != "Service" or _labels(svc).get(ROUTER_LABEL) != "on":
            continue
        injected[(_ns(svc), str(svc["metadata"]["name"]))] = svc
        try:
            kept = svc["metadata"].get("annotations", {}).get(TARGET_PORTS_ANNOTATION, "{}")
            targets = {int(k): int(v) for k, v in json.loads(kept).items()}
        except (AttributeError, TypeError, ValueError):
            continue  # an annotation edited by hand: the Service is left out, not guessed
        for port in svc.get("spec", {}).get("ports") or []:
            if int(port["port"]) not in targets:
                continue  # a port the router does not stand in front of (not HTTP)
            name = table_service(svc, port)
            table.baseline[name] = Upstream("127.0.0.1", targets[int(port["port"])])
            table.forks.setdefault(name, {})
    table.callers = _callers(objects, injected)
    by_sandbox: dict[tuple[str, str], dict[str, ForkRoute]] = {}
    keyed = [s for s in sandboxes if _key_of(s)]
    for sandbox in keyed:
        ident = (_ns(sandbox), str(sandbox["metadata"]["name"]))
        routes = _fork_routes(sandbox, owned.get(ident, []), injected, table.baseline.keys())
        by_sandbox[ident] = routes
        for service, route in routes.items():
            table.forks[service][str(_key_of(sandbox))] = route
    for group in route_groups:
        key = _key_of(group)
        if not key:
            continue
        try:
            members = [m for m in group_members(group, keyed) if _ns(m) == _ns(group)]
        except RenderError:
            continue
        owners: dict[str, list[str]] = {}
        for member in members:
            for service in by_sandbox[(_ns(member), str(member["metadata"]["name"]))]:
                owners.setdefault(service, []).append(str(member["metadata"]["name"]))
        group_name = str(group["metadata"]["name"])
        for service, names in owners.items():
            if len(names) == 1:
                table.forks[service][key] = by_sandbox[(_ns(group), names[0])][service]
            else:
                table.forks[service][key] = ForkRoute(
                    service, group_name, None, False,
                    f"route group {group_name}: service {service} is forked by "
                    f"{', '.join(names)}; narrow match.labels so one sandbox forks it")
    return table
