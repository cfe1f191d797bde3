"""Rendering a Sandbox against baseline manifests: forked Deployments, their Services, and what
sends the routing key to them, in one of two routing modes.

A fork is a copy of the baseline Deployment whose pods carry changed values for the labels the
baseline Service selects on (`app: pricing` becomes `app: pricing--sb-a`), so the baseline
Service never sends them traffic; the fork's own Service selects exactly them.

- `istio`: VirtualService routes that match the key in `baggage`/`tracestate`, merged into the
  team's own VirtualService without touching its routes (or a laneway-owned one when none exists).
- `router`: the laneway router as a sidecar in front of the forked Services (`router_mode`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from laneway.core.duration import parse_duration
from laneway.core.kubernetes.objects import (
    FORK_OF_LABEL,
    MANAGED_BY,
    ROUTE_PREFIX,
    SANDBOX_LABEL,
    Mode,
    RenderError,
    clean_metadata,
    find,
    namespace_of,
    object_name,
    original_target_ports,
    services_for,
    virtual_service_of,
)
from laneway.core.kubernetes.regex import baggage_regex, tracestate_regex
from laneway.core.kubernetes.router_mode import RouterSidecar, inject_router, strip_router
from laneway.core.spec import DNS_LABEL_RE

__all__ = ["merge_routes", "render_sandbox", "route_name"]


def _env_list(env: Any, path: str) -> list[dict[str, Any]]:
    if env is None:
        return []
    if isinstance(env, dict):
        return [{"name": str(k), "value": str(v)} for k, v in env.items()]
    if isinstance(env, list) and all(isinstance(e, dict) and "name" in e for e in env):
        return [dict(e) for e in env]
    raise RenderError(f"{path}: env must be a mapping NAME: value or a list of {{name, value}}")


def _fork_deployment(base: dict[str, Any], sandbox: str, key: str, fork: Mapping[str, Any],
                     selector_keys: set[str], index: int) -> dict[str, Any]:
    dep = copy.deepcopy(base)
    dep.pop("status", None)
    strip_router(dep)
    meta = clean_metadata(dep.get("metadata", {}))
    meta["name"] = object_name(meta["name"], "lw", sandbox)
    meta["labels"] = {**meta.get("labels", {}), **MANAGED_BY, SANDBOX_LABEL: sandbox}
    dep["metadata"] = meta
    spec = dep.setdefault("spec", {})
    spec["replicas"] = 1
    template = spec.setdefault("template", {})
    pod_labels = template.setdefault("metadata", {}).setdefault("labels", {})
    match = spec.setdefault("selector", {}).setdefault("matchLabels", {})
    for label in selector_keys:
        if label in pod_labels:
            pod_labels[label] = object_name(str(pod_labels[label]), "", sandbox)[:63].strip("-")
        if label in match:
            match[label] = pod_labels.get(label, match[label])
    pod_labels[SANDBOX_LABEL] = sandbox
    match[SANDBOX_LABEL] = sandbox
    containers = template.setdefault("spec", {}).get("containers") or []
    if not containers:
        raise RenderError(f"spec.forks[{index}].workload: the Deployment has no containers")
    wanted = fork.get("container")
    target = next((c for c in containers if c.get("name") == wanted), None) if wanted \
        else containers[0]
    if target is None:
        names = ", ".join(str(c.get("name")) for c in containers)
        raise RenderError(f"spec.forks[{index}].container: no container {wanted!r} "
                          f"(containers: {names})")
    if fork.get("image"):
        target["image"] = fork["image"]
    env = [e for e in target.get("env", []) if isinstance(e, dict)]
    overrides = _env_list(fork.get("env"), f"spec.forks[{index}].env")
    overrides += [{"name": "LANEWAY_SANDBOX", "value": sandbox},
                  {"name": "LANEWAY_ROUTING_KEY", "value": key}]
    overridden = {e["name"] for e in overrides}
    target["env"] = [e for e in env if e.get("name") not in overridden] + overrides
    return dep


def _fork_service(base: dict[str, Any], sandbox: str, pod_labels: Mapping[str, str],
                  targets: Mapping[int, int]) -> dict[str, Any]:
    meta = base["metadata"]
    selector = {k: pod_labels[k] for k in base["spec"]["selector"]}
    selector[SANDBOX_LABEL] = sandbox
    # Every port with its number, name and appProtocol: Istio picks the protocol it speaks to
    # the fork from them (`grpc-api` -> HTTP/2), as for the baseline, so gRPC and h2c forks
    # need no DestinationRule (`h2UpgradePolicy` would only be for a port named http).
    ports = [{**{k: v for k, v in p.items() if k != "nodePort"},
              "targetPort": targets.get(int(p["port"]), p.get("targetPort", p["port"]))}
             for p in base["spec"].get("ports", [])]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": object_name(meta["name"], "lw", sandbox),
                     "namespace": namespace_of(base, "default"),
                     "labels": {**MANAGED_BY, SANDBOX_LABEL: sandbox,
                                FORK_OF_LABEL: meta["name"]}},
        "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
    }


def route_name(sandbox: str) -> str:
    """The name of a sandbox's VirtualService route (exact: no prefix of another's)."""
    return object_name(ROUTE_PREFIX.rstrip("-"), sandbox)


def _laneway_route(sandbox: str, key: str, host: str) -> dict[str, Any]:
    # An `http` route, with no port: Istio applies it on every HTTP port of the host, gRPC and
    # HTTP/2 ones too (a gRPC call is an HTTP/2 request whose metadata are its headers, so
    # `baggage` matches alike), and sends the request to the port of the fork's Service it came
    # in on, which `_fork_service` keeps. TCP and TLS ports have no `http` routes.
    return {
        "name": route_name(sandbox),
        "match": [{"headers": {"baggage": {"regex": baggage_regex(key)}}},
                  {"headers": {"tracestate": {"regex": tracestate_regex(key)}}}],
        "route": [{"destination": {"host": host}}],
    }


def _sandbox_fields(doc: Mapping[str, Any]) -> tuple[str, str, list[Mapping[str, Any]]]:
    if doc.get("kind") != "Sandbox":
        raise RenderError("kind: must be Sandbox (apiVersion laneway.dev/v1alpha1)")
    meta = doc.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not DNS_LABEL_RE.match(name) or len(name) > 40:
        raise RenderError("metadata.name: must be a DNS label of at most 40 characters")
    spec = doc.get("spec") or {}
    forks = spec.get("forks")
    if not isinstance(forks, list) or not forks:
        raise RenderError("spec.forks: must list at least one fork")
    if spec.get("ttl") is not None:
        try:
            parse_duration(str(spec["ttl"]))
        except ValueError as exc:
            raise RenderError(f"spec.ttl: {exc}") from exc
    return name, str(meta.get("namespace") or "default"), forks


def _virtual_service_routes(out: list[dict[str, Any]], baseline: list[dict[str, Any]],
                            routes: list[tuple[str, str, dict[str, Any]]],
                            sandbox: str) -> None:
    routes_by_vs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    new_vs: dict[tuple[str, str], dict[str, Any]] = {}
    for namespace, svc_name, route in routes:
        vs = virtual_service_of(baseline, svc_name, namespace)
        if vs is not None:
            ident = (namespace, vs["metadata"]["name"])
            new_vs.setdefault(ident, vs)
        else:
            ident = (namespace, object_name("laneway", svc_name))
            new_vs.setdefault(ident, {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": ident[1], "namespace": namespace,
                             "labels": dict(MANAGED_BY)},
                "spec": {"hosts": [svc_name], "http": [{
                    "name": "laneway-default",
                    "route": [{"destination": {
                        "host": f"{svc_name}.{namespace}.svc.cluster.local"}}]}]},
            })
        routes_by_vs.setdefault(ident, []).append(route)
    for ident, vs in new_vs.items():
        merged = copy.deepcopy(vs)
        merged.pop("status", None)
        merged["metadata"] = clean_metadata(merged.get("metadata", {}))
        spec = merged.setdefault("spec", {})
        spec["http"] = merge_routes(spec.get("http", []), routes_by_vs[ident])
        out.append(merged)


def merge_routes(existing: list[dict[str, Any]],
                 mine: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """laneway's keyed routes first, sorted by name (so the passes of sandboxes and route
    groups agree on one order and never undo each other), then every other route, unchanged
    and in order: the team's, and the default of a laneway-owned VirtualService."""
    names = {r["name"] for r in mine}
    keyed = [r for r in existing if str(r.get("name", "")).startswith(ROUTE_PREFIX)
             and r.get("name") != "laneway-default" and r.get("name") not in names]
    rest = [r for r in existing if r not in keyed and r.get("name") not in names]
    return sorted([*keyed, *mine], key=lambda r: str(r["name"])) + rest


def render_sandbox(doc: Mapping[str, Any], baseline: list[dict[str, Any]], routing_key: str,
                   mode: Mode = "istio",
                   sidecar: RouterSidecar | None = None) -> list[dict[str, Any]]:
    """Every object the operator would create or patch for the Sandbox `doc`."""
    if mode not in ("istio", "router"):
        raise RenderError(f"mode {mode!r}: must be istio or router")
    sandbox, default_ns, forks = _sandbox_fields(doc)
    out: list[dict[str, Any]] = []
    routes: list[tuple[str, str, dict[str, Any]]] = []
    to_inject: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for i, fork in enumerate(forks):
        workload = fork.get("workload") or {}
        if workload.get("kind", "Deployment") != "Deployment":
            raise RenderError(f"spec.forks[{i}].workload.kind: only Deployment is supported")
        name = workload.get("name")
        namespace = str(workload.get("namespace") or default_ns)
        if namespace != default_ns:
            raise RenderError(f"spec.forks[{i}].workload.namespace: must be the Sandbox's own "
                              f"({default_ns}): its forks are owned by it, and owner references "
                              "cannot cross namespaces")
        base = find(baseline, "Deployment", str(name), namespace) if name else None
        if base is None:
            raise RenderError(f"spec.forks[{i}].workload: no Deployment {name!r} in namespace "
                              f"{namespace!r} among the baseline manifests")
        pod_labels = base.get("spec", {}).get("template", {}).get("metadata", {}).get(
            "labels", {})
        services = services_for(baseline, pod_labels, namespace)
        if not services:
            raise RenderError(f"spec.forks[{i}].workload: no Service selects the pods of "
                              f"Deployment {name!r}; a fork needs one to be routed to")
        selector_keys = {k for svc in services for k in svc["spec"]["selector"]}
        dep = _fork_deployment(base, sandbox, routing_key, fork, selector_keys, i)
        out.append(dep)
        fork_labels = dep["spec"]["template"]["metadata"]["labels"]
        for svc in services:
            fork_svc = _fork_service(svc, sandbox, fork_labels,
                                     original_target_ports(svc, base))
            out.append(fork_svc)
            svc_name = svc["metadata"]["name"]
            host = f"{fork_svc['metadata']['name']}.{namespace}.svc.cluster.local"
            routes.append((namespace, svc_name, _laneway_route(sandbox, routing_key, host)))
            to_inject.setdefault(namespace, {})[(namespace, svc_name)] = svc
    if mode == "istio":
        _virtual_service_routes(out, baseline, routes, sandbox)
    else:
        for namespace, forked in sorted(to_inject.items()):
            out += inject_router(baseline, list(forked.values()), namespace,
                           sidecar or RouterSidecar())
    return out
