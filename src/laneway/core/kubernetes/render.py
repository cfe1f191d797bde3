"""Rendering a Sandbox against baseline manifests: forked Deployments, their Services, and what
sends the routing key to them, in one of two routing modes.

A fork is a copy of the baseline Deployment whose pods carry changed values for the labels the
baseline Service selects on (`app: pricing` becomes `app: pricing--sb-a`), so the baseline
Service never sends them traffic; the fork's own Service selects exactly them.

- `istio`: VirtualService routes that match the key in `baggage`/`tracestate`, merged into the
  team's own VirtualService without touching its routes (or a laneway-owned one when none exists).
- `router`: for clusters without a mesh. The laneway router runs as a sidecar in the baseline
  pods of every forked Service and the Service's `targetPort`s point at it; it forwards to the
  application in the same pod (127.0.0.1) or, for a key with a fork, to the fork's Service, as the
  operator's routes feed says. This injection is made once per Service and then stays: removing it
  would restart the baseline's pods every time the last sandbox forking them goes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from laneway.core.duration import parse_duration
from laneway.core.kubernetes.regex import baggage_regex, tracestate_regex
from laneway.core.plan import labels_match
from laneway.core.spec import DNS_LABEL_RE

__all__ = ["FORK_OF_LABEL", "MANAGED_BY", "ROUTER_LABEL", "ROUTE_PREFIX", "SANDBOX_LABEL",
           "TARGET_PORTS_ANNOTATION", "Mode", "RenderError", "RouterSidecar",
           "group_members", "group_route_name", "load_manifests", "original_target_ports",
           "render_route_group", "render_sandbox", "route_name", "table_service"]

Mode = Literal["istio", "router"]
MANAGED_BY = {"app.kubernetes.io/managed-by": "laneway"}
SANDBOX_LABEL = "laneway.dev/sandbox"
FORK_OF_LABEL = "laneway.dev/fork-of"  # on a fork's Service: the baseline Service it forks
ROUTER_LABEL = "laneway.dev/router"  # "on": a baseline Service whose pods carry the router
TARGET_PORTS_ANNOTATION = "laneway.dev/target-ports"  # the targetPorts before the router
ROUTER_CONTAINER = "laneway-router"
TOKEN_VOLUME = "laneway-routes-token"  # noqa: S105 - names, not secrets
TOKEN_AUDIENCE = "laneway-routes"  # noqa: S105
TOKEN_DIR = "/var/run/secrets/laneway"  # noqa: S105
ROUTER_FIRST_PORT = 15080
FEED_PORT = 8790
DEFAULT_IMAGE = "laneway:dev"
ROUTE_PREFIX = "laneway-"  # routes and objects laneway owns; GitOps tools can ignore these
_DROP_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
                  "selfLink", "ownerReferences")


class RenderError(Exception):
    """A sandbox that cannot be rendered against these manifests; says which field and why."""


@dataclass(frozen=True, slots=True)
class RouterSidecar:
    """What router mode injects: the image (with laneway installed) and where the operator's
    routes feed is."""

    image: str = DEFAULT_IMAGE
    operator_namespace: str = "laneway-system"

    @property
    def feed_url(self) -> str:
        return f"http://laneway-operator.{self.operator_namespace}.svc:{FEED_PORT}/v1/routes"


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


def _strip_router(dep: dict[str, Any]) -> None:
    """Remove the router sidecar (a fork copied from an injected baseline Deployment needs none:
    keyed requests reach it already routed)."""
    pod = dep.get("spec", {}).get("template", {}).get("spec", {})
    pod["containers"] = [c for c in pod.get("containers") or []
                         if c.get("name") != ROUTER_CONTAINER]
    if "volumes" in pod:
        pod["volumes"] = [v for v in pod["volumes"] if v.get("name") != TOKEN_VOLUME]
        if not pod["volumes"]:
            del pod["volumes"]


def _fork_deployment(base: dict[str, Any], sandbox: str, key: str, fork: Mapping[str, Any],
                     selector_keys: set[str], index: int) -> dict[str, Any]:
    dep = copy.deepcopy(base)
    dep.pop("status", None)
    _strip_router(dep)
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


def _containers(dep: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [])


def original_target_ports(service: Mapping[str, Any],
                          deployment: Mapping[str, Any] | None) -> dict[int, int]:
    """Service port -> the container port the application listens on: the targetPort before
    the router was put in front (kept in an annotation), a named targetPort resolved against
    the Deployment's containers, or the port itself when no targetPort is given."""
    kept = (service.get("metadata", {}).get("annotations") or {}).get(TARGET_PORTS_ANNOTATION)
    out = {int(k): int(v) for k, v in json.loads(kept).items()} if kept else {}
    named = {str(p["name"]): int(p["containerPort"])
             for c in (_containers(deployment) if deployment else [])
             for p in c.get("ports") or [] if p.get("name")}
    for port in service.get("spec", {}).get("ports") or []:
        if int(port["port"]) in out:
            continue  # behind the router: where it pointed before
        target = port.get("targetPort", port["port"])
        if isinstance(target, str) and not target.isdigit():
            if target not in named:
                if deployment is None:
                    continue
                raise RenderError(f"Service {service['metadata']['name']}: targetPort "
                                  f"{target!r} names no container port of the Deployment")
            target = named[target]
        out[int(port["port"])] = int(target)
    return out


def table_service(service: Mapping[str, Any], port: Mapping[str, Any]) -> str:
    """The name a Service port has in the routes table: `pricing.shop`, or `pricing.shop:grpc`
    for a Service with several ports."""
    meta = service["metadata"]
    name = f"{meta['name']}.{_namespace(service, 'default')}"
    ports = service.get("spec", {}).get("ports") or []
    return name if len(ports) == 1 else f"{name}:{port.get('name') or port['port']}"


def _fork_service(base: dict[str, Any], sandbox: str, pod_labels: Mapping[str, str],
                  targets: Mapping[int, int]) -> dict[str, Any]:
    meta = base["metadata"]
    selector = {k: pod_labels[k] for k in base["spec"]["selector"]}
    selector[SANDBOX_LABEL] = sandbox
    ports = [{**{k: v for k, v in p.items() if k != "nodePort"},
              "targetPort": targets.get(int(p["port"]), p.get("targetPort", p["port"]))}
             for p in base["spec"].get("ports", [])]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": _name(meta["name"], "lw", sandbox),
                     "namespace": _namespace(base, "default"),
                     "labels": {**MANAGED_BY, SANDBOX_LABEL: sandbox,
                                FORK_OF_LABEL: meta["name"]}},
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


def _baseline_deployments(objects: Iterable[dict[str, Any]], service: Mapping[str, Any],
                          namespace: str) -> list[dict[str, Any]]:
    selector = service.get("spec", {}).get("selector") or {}
    return [o for o in objects if o.get("kind") == "Deployment"
            and _namespace(o, "default") == namespace
            and SANDBOX_LABEL not in (o.get("metadata", {}).get("labels") or {})
            and selector and all(
                o.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
                .get(k) == v for k, v in selector.items())]


def speaks_http1(port: Mapping[str, Any]) -> bool:
    """Whether a Service port carries HTTP/1.1, by the convention Istio users know: an
    `appProtocol` of `http`, or a name `http` / `http-*`. Other named ports (grpc, http2, tcp,
    redis-…) are left alone; an unnamed TCP port is taken for HTTP, the common case."""
    if port.get("protocol", "TCP") != "TCP":
        return False
    protocol = str(port.get("appProtocol") or "").lower()
    if protocol:
        return protocol == "http"
    name = str(port.get("name") or "").lower()
    return not name or name == "http" or name.startswith("http-")


def _check_routable(service: Mapping[str, Any]) -> None:
    name = service["metadata"]["name"]
    if service.get("spec", {}).get("clusterIP") == "None":
        raise RenderError(f"Service {name} is headless (clusterIP: None): its callers reach "
                          "pods directly, so router mode cannot stand in front of it")
    if not any(speaks_http1(p) for p in service.get("spec", {}).get("ports") or []):
        raise RenderError(f"Service {name} has no HTTP/1.1 port (name it http or http-*, or set "
                          "appProtocol: http): router mode routes HTTP/1.1")


def _inject(objects: list[dict[str, Any]], services: list[dict[str, Any]], namespace: str,
            sidecar: RouterSidecar) -> list[dict[str, Any]]:
    """The baseline Services of `services` pointed at the router (their HTTP/1.1 ports), and
    every Deployment they select carrying it, listening for every injected Service that selects
    its pods. Ports are given by position among all ports of the Services selecting the pods,
    so they never move."""
    for svc in services:
        _check_routable(svc)
    injected = {svc["metadata"]["name"] for svc in services} | {
        o["metadata"]["name"] for o in objects
        if o.get("kind") == "Service" and _namespace(o, "default") == namespace
        and (o["metadata"].get("labels") or {}).get(ROUTER_LABEL) == "on"}
    out: list[dict[str, Any]] = []
    deployments: dict[str, dict[str, Any]] = {}
    for svc in services:
        for dep in _baseline_deployments(objects, svc, namespace):
            deployments.setdefault(dep["metadata"]["name"], dep)
    router_ports: dict[tuple[str, int], int] = {}  # (service, port) -> the router's port
    for dep_name, dep in sorted(deployments.items()):
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        selecting = sorted(_services_for(objects, labels, namespace),
                           key=lambda o: str(o["metadata"]["name"]))
        listeners: list[str] = []
        ports: list[dict[str, Any]] = []
        slot = 0
        taken = {int(p["containerPort"]) for c in _containers(dep)
                 if c.get("name") != ROUTER_CONTAINER for p in c.get("ports") or []}
        for svc in selecting:
            for port in svc.get("spec", {}).get("ports") or []:
                number = ROUTER_FIRST_PORT + slot
                slot += 1
                if svc["metadata"]["name"] not in injected or not speaks_http1(port):
                    continue
                if number in taken:
                    raise RenderError(f"Deployment {dep_name}: a container already listens on "
                                      f"{number}, which the router needs")
                key = (str(svc["metadata"]["name"]), int(port["port"]))
                if router_ports.setdefault(key, number) != number:
                    raise RenderError(f"Service {key[0]}: its pods come from Deployments "
                                      "selected by different Services; the router cannot "
                                      "listen on one port for all of them")
                # The baseline is on the command line too, so that a pod serves its own
                # traffic from its first moment, before (or without) the operator's feed.
                app_port = original_target_ports(svc, dep)[key[1]]
                listeners += ["--listen", f"{table_service(svc, port)}={number}",
                              "--baseline", f"{table_service(svc, port)}=127.0.0.1:{app_port}"]
                ports.append({"name": f"lw-{number}", "containerPort": number})
        if ports:
            out.append(_with_router(dep, listeners, ports, sidecar))
    for svc in services:
        selected = _baseline_deployments(objects, svc, namespace)
        if not selected:
            raise RenderError(f"Service {svc['metadata']['name']}: no Deployment has the pods "
                              "it selects; router mode puts the router in their pods")
        targets = original_target_ports(svc, selected[0])
        patched = copy.deepcopy(svc)
        patched.pop("status", None)
        meta = patched["metadata"] = _clean_metadata(patched.get("metadata", {}))
        meta["labels"] = {**(meta.get("labels") or {}), ROUTER_LABEL: "on"}
        routed = {int(p["port"]) for p in patched["spec"].get("ports") or []
                  if speaks_http1(p)}
        meta["annotations"] = {**(meta.get("annotations") or {}), TARGET_PORTS_ANNOTATION:
                               json.dumps({str(k): v for k, v in sorted(targets.items())
                                           if k in routed})}
        for port in patched["spec"].get("ports") or []:
            if int(port["port"]) in routed:
                port["targetPort"] = router_ports[(meta["name"], int(port["port"]))]
        out.append(patched)
    return out


def _with_router(dep: dict[str, Any], listeners: list[str], ports: list[dict[str, Any]],
                 sidecar: RouterSidecar) -> dict[str, Any]:
    out = copy.deepcopy(dep)
    out.pop("status", None)
    out["metadata"] = _clean_metadata(out.get("metadata", {}))
    _strip_router(out)
    pod = out["spec"]["template"]["spec"]
    pod["containers"].append({
        "name": ROUTER_CONTAINER,
        "image": sidecar.image,
        "command": ["python", "-m", "laneway.router"],
        "args": ["--host", "0.0.0.0", *listeners, "--routes", sidecar.feed_url,
                 "--token-file", f"{TOKEN_DIR}/token"],
        "ports": ports,
        "readinessProbe": {"tcpSocket": {"port": ports[0]["containerPort"]},
                           "periodSeconds": 5},
        "resources": {"requests": {"cpu": "20m", "memory": "48Mi"},
                      "limits": {"memory": "128Mi"}},
        # Fits the "restricted" Pod Security Standard.
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "runAsUser": 10001,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}],
    })
    # A ServiceAccount token for the feed, bound to its audience and rotated by the kubelet;
    # the operator checks it with a TokenReview.
    pod.setdefault("volumes", []).append({"name": TOKEN_VOLUME, "projected": {"sources": [
        {"serviceAccountToken": {"audience": TOKEN_AUDIENCE, "expirationSeconds": 3600,
                                 "path": "token"}}]}})
    return out


def _virtual_service_routes(out: list[dict[str, Any]], baseline: list[dict[str, Any]],
                            routes: list[tuple[str, str, dict[str, Any]]],
                            sandbox: str) -> None:
    routes_by_vs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    new_vs: dict[tuple[str, str], dict[str, Any]] = {}
    for namespace, svc_name, route in routes:
        vs = _virtual_service_of(baseline, svc_name, namespace)
        if vs is not None:
            ident = (namespace, vs["metadata"]["name"])
            new_vs.setdefault(ident, vs)
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
        spec["http"] = _merge_routes(spec.get("http", []), routes_by_vs[ident])
        out.append(merged)


def _merge_routes(existing: list[dict[str, Any]], mine: list[dict[str, Any]]) -> list[
        dict[str, Any]]:
    """laneway's keyed routes first, sorted by name (so the passes of sandboxes and route
    groups agree on one order and never undo each other), then every other route, unchanged
    and in order: the team's, and the default of a laneway-owned VirtualService."""
    names = {r["name"] for r in mine}
    keyed = [r for r in existing if str(r.get("name", "")).startswith(ROUTE_PREFIX)
             and r.get("name") != "laneway-default" and r.get("name") not in names]
    rest = [r for r in existing if r not in keyed and r.get("name") not in names]
    return sorted([*keyed, *mine], key=lambda r: str(r["name"])) + rest


def _virtual_service_of(objects: Iterable[dict[str, Any]], svc_name: str,
                        namespace: str) -> dict[str, Any] | None:
    return next((o for o in objects if o.get("kind") == "VirtualService"
                 and _namespace(o, "default") == namespace
                 and set(o.get("spec", {}).get("hosts", [])) & _hosts_of(svc_name, namespace)),
                None)


def render_sandbox(doc: Mapping[str, Any], baseline: list[dict[str, Any]], routing_key: str,
                   mode: Mode = "istio", sidecar: RouterSidecar | None = None) -> list[
                       dict[str, Any]]:
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
            out += _inject(baseline, list(forked.values()), namespace,
                           sidecar or RouterSidecar())
    return out


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
    return _name("laneway-rg", group)


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
    members = group_members(group, (s for s in sandboxes if _namespace(s, "default") ==
                                    _namespace(group, "default")))
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
            host = f"{_name(svc_name, 'lw', owned[0])}.{namespace}.svc.cluster.local"
            route["route"] = [{"destination": {"host": host}}]
        else:
            route["directResponse"] = {"status": 503, "body": {"string": (
                f"route group {name}: service {svc_name} is forked by {', '.join(owned)}; "
                "narrow match.labels so one sandbox forks it")}}
        vs = _virtual_service_of(cluster, svc_name, namespace)
        if vs is None:
            raise RenderError(f"service {svc_name}: no VirtualService for it yet; apply the "
                              "member sandboxes first (they create one)")
        merged = copy.deepcopy(vs)
        merged.pop("status", None)
        merged["metadata"] = _clean_metadata(merged.get("metadata", {}))
        merged["spec"]["http"] = _merge_routes(merged["spec"].get("http", []), [route])
        out.append(merged)
    status = {"routingKey": routing_key, "sandboxes": [m["metadata"]["name"] for m in members],
              "conflicts": conflicts}
    return out, status
