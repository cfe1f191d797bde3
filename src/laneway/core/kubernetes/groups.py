"""Route groups on Kubernetes: which sandboxes a `RouteGroup` selects, and (istio mode) the
VirtualService routes that send the group's key to their forks. Router mode routes groups in the
routes table (`table`); both report the same members and conflicts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from laneway.core.kubernetes.objects import (
    Mode,
    RenderError,
    clean_metadata,
    find,
    namespace_of,
    object_name,
    services_for,
    virtual_service_of,
)
from laneway.core.kubernetes.regex import baggage_regex, tracestate_regex
from laneway.core.kubernetes.render import merge_routes
from laneway.core.plan import labels_match

__all__ = ["group_members", "group_route_name", "render_route_group"]


def group_members(group: Mapping[str, Any],
                  sandboxes: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The sandboxes a RouteGroup's `spec.match.labels` selects (globs), by name."""
    match = ((group.get("spec") or {}).get("match") or {}).get("labels") or {}
    if not match:
        raise RenderError("spec.match.labels: must name at least one label (KEY: GLOB)")
    return sorted((s for s in sandboxes if labels_match(match, _labels_of(s))),
                  key=lambda s: str(s["metadata"]["name"]))


def _labels_of(doc: Mapping[str, Any]) -> dict[str, str]:
    spec_labels = (doc.get("spec") or {}).get("labels") or {}
    return {**(doc.get("metadata", {}).get("labels") or {}), **spec_labels}


def group_route_name(group: str) -> str:
    """The name of a route group's VirtualService routes."""
    return object_name("laneway-rg", group)


def render_route_group(group: Mapping[str, Any], sandboxes: Iterable[Mapping[str, Any]],
                       cluster: list[dict[str, Any]], routing_key: str,
                       mode: Mode = "istio") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """VirtualService routes that send a route group's key to the forks of every matching
    sandbox of its namespace, and the group's status (members, conflicts). Two members forking
    the same service get an explicit 503 for the group's key there (as the local router
    answers), never a guess. In router mode the routes are in the routes table
    (`core.kubernetes.table`) and only the status is made here.
    """
    meta = group.get("metadata") or {}
    name = str(meta.get("name"))
    members = group_members(group, (s for s in sandboxes if namespace_of(s, "default") ==
                                    namespace_of(group, "default")))
    owners: dict[tuple[str, str], list[str]] = {}
    for sandbox in members:
        sb_name = str(sandbox["metadata"]["name"])
        default_ns = str(sandbox["metadata"].get("namespace") or "default")
        for fork in (sandbox.get("spec") or {}).get("forks") or []:
            workload = fork.get("workload") or {}
            namespace = str(workload.get("namespace") or default_ns)
            base = find(cluster, "Deployment", str(workload.get("name")), namespace)
            if base is None:
                continue
            labels = base["spec"]["template"]["metadata"].get("labels", {})
            for svc in services_for(cluster, labels, namespace):
                owners.setdefault((namespace, svc["metadata"]["name"]), []).append(sb_name)
    route_name = group_route_name(name)
    out: list[dict[str, Any]] = []
    conflicts = []
    for (namespace, svc_name), owned in sorted(owners.items()):
        if len(owned) > 1:
            conflicts.append({"service": svc_name, "sandboxes": owned})
        if mode == "router":
            continue
        route: dict[str, Any] = {
            "name": route_name,
            "match": [{"headers": {"baggage": {"regex": baggage_regex(routing_key)}}},
                      {"headers": {"tracestate": {"regex": tracestate_regex(routing_key)}}}]}
        if len(owned) == 1:
            host = f"{object_name(svc_name, 'lw', owned[0])}.{namespace}.svc.cluster.local"
            route["route"] = [{"destination": {"host": host}}]
        else:
            route["directResponse"] = {"status": 503, "body": {"string": (
                f"route group {name}: service {svc_name} is forked by {', '.join(owned)}; "
                "narrow match.labels so one sandbox forks it")}}
        vs = virtual_service_of(cluster, svc_name, namespace)
        if vs is None:
            raise RenderError(f"service {svc_name}: no VirtualService for it yet; apply the "
                              "member sandboxes first (they create one)")
        merged = copy.deepcopy(vs)
        merged.pop("status", None)
        merged["metadata"] = clean_metadata(merged.get("metadata", {}))
        merged["spec"]["http"] = merge_routes(merged["spec"].get("http", []), [route])
        out.append(merged)
    status = {"routingKey": routing_key, "sandboxes": [m["metadata"]["name"] for m in members],
              "conflicts": conflicts}
    return out, status
