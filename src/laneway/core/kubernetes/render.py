"""Rendering a Sandbox against baseline manifests: forked Deployments, their Services, and the
Istio VirtualService routes that send the routing key to them (merged into the team's own
VirtualService without touching its routes, or a laneway-owned one when none exists).

A fork is a copy of the baseline Deployment whose pods carry changed values for the labels the
baseline Service selects on (`app: pricing` becomes `app: pricing--sb-a`), so the baseline
Service never sends them traffic; the fork's own Service selects exactly them.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from laneway.core.duration import parse_duration
from laneway.core.kubernetes.regex import baggage_regex, tracestate_regex
from laneway.core.spec import DNS_LABEL_RE

__all__ = ["MANAGED_BY", "ROUTE_PREFIX", "SANDBOX_LABEL", "RenderError", "load_manifests",
           "render_route_group", "render_sandbox", "route_name"]

MANAGED_BY = {"app.kubernetes.io/managed-by": "laneway"}
SANDBOX_LABEL = "laneway.dev/sandbox"
ROUTE_PREFIX = "laneway-"  # routes and objects laneway owns; GitOps tools can ignore these
_DROP_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
                  "selfLink", "ownerReferences")


class RenderError(Exception):
    """A sandbox that cannot be rendered against these manifests; says which field and why."""


def _name(*parts: str, limit: int = 63) -> str:
    name = "-".join(parts)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name[: limit - 9].rstrip("-") + "-" + digest


def load_manifests(folder: Path) -> list[dict[str, Any]]:
    """Every object in the YAML files of `folder` (multi-document files too)."""
    objects: list[dict[str, Any]] = []
    files = sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")])
    if not files:
        raise RenderError(f"--baseline {folder}: no .yaml files there")
    for path in files:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise RenderError(f"{path}: invalid YAML: {exc}") from exc
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "List":
                objects += [o for o in doc.get("items", []) if isinstance(o, dict)]
            elif isinstance(doc, dict) and doc.get("kind"):
                objects.append(doc)
    return objects


def _namespace(obj: Mapping[str, Any], default: str) -> str:
    return str(obj.get("metadata", {}).get("namespace") or default)


def _find(objects: Iterable[dict[str, Any]], kind: str, name: str,
          namespace: str) -> dict[str, Any] | None:
    for obj in objects:
        meta = obj.get("metadata", {})
        if obj.get("kind") == kind and meta.get("name") == name and \
                _namespace(obj, "default") == namespace:
            return obj
    return None


def _services_for(objects: Iterable[dict[str, Any]], labels: Mapping[str, str],
                  namespace: str) -> list[dict[str, Any]]:
    found = []
    for obj in objects:
        selector = obj.get("spec", {}).get("selector") or {}
        if obj.get("kind") == "Service" and _namespace(obj, "default") == namespace and \
                selector and all(labels.get(k) == v for k, v in selector.items()):
            found.append(obj)
    return found


def _hosts_of(service: str, namespace: str) -> set[str]:
    return {service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"}


def _clean_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: copy.deepcopy(v) for k, v in meta.items() if k not in _DROP_METADATA}
    annotations = {k: v for k, v in (out.get("annotations") or {}).items()
                   if not k.startswith(("deployment.kubernetes.io/",
                                        "kubectl.kubernetes.io/last-applied"))}
    if annotations:
        out["annotations"] = annotations
    else:
        out.pop("annotations", None)
    return out


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
    meta = _clean_metadata(dep.get("metadata", {}))
    meta["name"] = _name(meta["name"], "lw", sandbox)
    meta["labels"] = {**meta.get("labels", {}), **MANAGED_BY, SANDBOX_LABEL: sandbox}
    dep["metadata"] = meta
    spec = dep.setdefault("spec", {})
    spec["replicas"] = 1
    template = spec.setdefault("template", {})
    pod_labels = template.setdefault("metadata", {}).setdefault("labels", {})
    match = spec.setdefault("selector", {}).setdefault("matchLabels", {})
    for label in selector_keys:
        if label in pod_labels:
            pod_labels[label] = _name(str(pod_labels[label]), "", sandbox)[:63].strip("-")
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


def _fork_service(base: dict[str, Any], sandbox: str, pod_labels: Mapping[str, str]) -> dict[
        str, Any]:
    meta = base["metadata"]
    selector = {k: pod_labels[k] for k in base["spec"]["selector"]}
    selector[SANDBOX_LABEL] = sandbox
    ports = [{k: v for k, v in p.items() if k != "nodePort"}
             for p in base["spec"].get("ports", [])]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": _name(meta["name"], "lw", sandbox),
                     "namespace": _namespace(base, "default"),
                     "labels": {**MANAGED_BY, SANDBOX_LABEL: sandbox}},
        "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
    }


def route_name(sandbox: str) -> str:
    """The name of a sandbox's VirtualService route (exact: no prefix of another's)."""
    return _name(ROUTE_PREFIX.rstrip("-"), sandbox)


def _laneway_route(sandbox: str, key: str, host: str) -> dict[str, Any]:
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


def render_sandbox(doc: Mapping[str, Any], baseline: list[dict[str, Any]],
                   routing_key: str) -> list[dict[str, Any]]:
    """Every object the operator would create or patch for the Sandbox `doc` (istio mode)."""
    sandbox, default_ns, forks = _sandbox_fields(doc)
    out: list[dict[str, Any]] = []
    routes_by_vs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    new_vs: dict[tuple[str, str], dict[str, Any]] = {}
    for i, fork in enumerate(forks):
        workload = fork.get("workload") or {}
        if workload.get("kind", "Deployment") != "Deployment":
            raise RenderError(f"spec.forks[{i}].workload.kind: only Deployment is supported")
        name = workload.get("name")
        namespace = str(workload.get("namespace") or default_ns)
        base = _find(baseline, "Deployment", str(name), namespace) if name else None
        if base is None:
            raise RenderError(f"spec.forks[{i}].workload: no Deployment {name!r} in namespace "
                              f"{namespace!r} among the baseline manifests")
        pod_labels = base.get("spec", {}).get("template", {}).get("metadata", {}).get(
            "labels", {})
        services = _services_for(baseline, pod_labels, namespace)
        if not services:
            raise RenderError(f"spec.forks[{i}].workload: no Service selects the pods of "
                              f"Deployment {name!r}; a fork needs one to be routed to")
        selector_keys = {k for svc in services for k in svc["spec"]["selector"]}
        dep = _fork_deployment(base, sandbox, routing_key, fork, selector_keys, i)
        out.append(dep)
        fork_labels = dep["spec"]["template"]["metadata"]["labels"]
        for svc in services:
            fork_svc = _fork_service(svc, sandbox, fork_labels)
            out.append(fork_svc)
            svc_name = svc["metadata"]["name"]
            host = f"{fork_svc['metadata']['name']}.{namespace}.svc.cluster.local"
            route = _laneway_route(sandbox, routing_key, host)
            vs = next((o for o in baseline if o.get("kind") == "VirtualService"
                       and _namespace(o, "default") == namespace
                       and set(o.get("spec", {}).get("hosts", [])) & _hosts_of(svc_name,
                                                                               namespace)),
                      None)
            if vs is not None:
                ident = (namespace, vs["metadata"]["name"])
                new_vs.setdefault(ident, vs)
                routes_by_vs.setdefault(ident, []).append(route)
            else:
                ident = (namespace, _name("laneway", svc_name))
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
        merged["metadata"] = _clean_metadata(merged.get("metadata", {}))
        spec = merged.setdefault("spec", {})
        mine = route_name(sandbox)
        theirs = [r for r in spec.get("http", []) if r.get("name") != mine]
        # laneway's routes first (most specific), then every route of theirs, unchanged and in
        # order; laneway-owned routes carry the `laneway-` prefix.
        spec["http"] = routes_by_vs[ident] + theirs
        out.append(merged)
    return out


def _labels_of(doc: Mapping[str, Any]) -> dict[str, str]:
    spec_labels = (doc.get("spec") or {}).get("labels") or {}
    return {**(doc.get("metadata", {}).get("labels") or {}), **spec_labels}


def render_route_group(group: Mapping[str, Any], sandboxes: list[Mapping[str, Any]],
                       cluster: list[dict[str, Any]], routing_key: str) -> tuple[
                           list[dict[str, Any]], dict[str, Any]]:
    """VirtualService routes that send a route group's key to the forks of every matching
    sandbox, and the group's status (members, conflicts). Two members forking the same service
    get an explicit 503 for the group's key there (as the local router answers), never a guess.
    """
    meta = group.get("metadata") or {}
    name = str(meta.get("name"))
    match = ((group.get("spec") or {}).get("match") or {}).get("labels") or {}
    if not match:
        raise RenderError("spec.match.labels: must name at least one label (KEY: GLOB)")
    members = sorted((s for s in sandboxes if all(
        fnmatch.fnmatchcase(_labels_of(s).get(k, ""), glob) and k in _labels_of(s)
        for k, glob in match.items())), key=lambda s: str(s["metadata"]["name"]))
    owners: dict[tuple[str, str], list[str]] = {}
    for sandbox in members:
        sb_name = str(sandbox["metadata"]["name"])
        default_ns = str(sandbox["metadata"].get("namespace") or "default")
        for fork in (sandbox.get("spec") or {}).get("forks") or []:
            workload = fork.get("workload") or {}
            namespace = str(workload.get("namespace") or default_ns)
            base = _find(cluster, "Deployment", str(workload.get("name")), namespace)
            if base is None:
                continue
            labels = base["spec"]["template"]["metadata"].get("labels", {})
            for svc in _services_for(cluster, labels, namespace):
                owners.setdefault((namespace, svc["metadata"]["name"]), []).append(sb_name)
    route_name = _name("laneway-rg", name)
    out: list[dict[str, Any]] = []
    conflicts = []
    for (namespace, svc_name), owned in sorted(owners.items()):
        route: dict[str, Any] = {
            "name": route_name,
            "match": [{"headers": {"baggage": {"regex": baggage_regex(routing_key)}}},
                      {"headers": {"tracestate": {"regex": tracestate_regex(routing_key)}}}]}
        if len(owned) == 1:
            host = f"{_name(svc_name, 'lw', owned[0])}.{namespace}.svc.cluster.local"
            route["route"] = [{"destination": {"host": host}}]
        else:
            conflicts.append({"service": svc_name, "sandboxes": owned})
            route["directResponse"] = {"status": 503, "body": {"string": (
                f"route group {name}: service {svc_name} is forked by {', '.join(owned)}; "
                "narrow match.labels so one sandbox forks it")}}
        vs = next((o for o in cluster if o.get("kind") == "VirtualService"
                   and _namespace(o, "default") == namespace
                   and set(o.get("spec", {}).get("hosts", [])) & _hosts_of(svc_name, namespace)),
                  None)
        if vs is None:
            raise RenderError(f"service {svc_name}: no VirtualService for it yet; apply the "
                              "member sandboxes first (they create one)")
        merged = copy.deepcopy(vs)
        merged.pop("status", None)
        merged["metadata"] = _clean_metadata(merged.get("metadata", {}))
        rest = [r for r in merged["spec"].get("http", []) if r.get("name") != route_name]
        merged["spec"]["http"] = [route, *rest]
        out.append(merged)
    status = {"routingKey": routing_key, "sandboxes": [m["metadata"]["name"] for m in members],
              "conflicts": conflicts}
    return out, status
