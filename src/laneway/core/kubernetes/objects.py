"""Kubernetes objects as plain dicts, and what every part of laneway's rendering shares about
them: the labels and annotations laneway sets, names that fit in 63 characters, reading
manifests, and finding a namespace's Deployments, Services and VirtualServices by selector.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["FORK_OF_LABEL", "MANAGED_BY", "ROUTER_LABEL", "ROUTE_PREFIX", "SANDBOX_LABEL",
           "TARGET_PORTS_ANNOTATION", "UNROUTED_PORTS_ANNOTATION", "Mode", "RenderError",
           "baseline_deployments", "clean_metadata", "containers_of", "find", "hosts_of",
           "load_manifests", "namespace_of", "object_name", "original_target_ports",
           "services_for", "table_service", "virtual_service_of"]

Mode = Literal["istio", "router"]
MANAGED_BY = {"app.kubernetes.io/managed-by": "laneway"}
SANDBOX_LABEL = "laneway.dev/sandbox"
FORK_OF_LABEL = "laneway.dev/fork-of"  # on a fork's Service: the baseline Service it forks
ROUTER_LABEL = "laneway.dev/router"  # "on": a baseline Service whose pods carry the router
TARGET_PORTS_ANNOTATION = "laneway.dev/target-ports"  # the targetPorts before the router
UNROUTED_PORTS_ANNOTATION = "laneway.dev/unrouted-ports"  # ports left alone, and why
ROUTE_PREFIX = "laneway-"  # routes and objects laneway owns; GitOps tools can ignore these
_DROP_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
                  "selfLink", "ownerReferences")


class RenderError(Exception):
    """A sandbox that cannot be rendered against these manifests; says which field and why."""


def object_name(*parts: str, limit: int = 63) -> str:
    """`parts` joined by '-', cut to a DNS label with a digest that keeps it unique."""
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


def namespace_of(obj: Mapping[str, Any], default: str) -> str:
    """The object's namespace, or `default` when its manifest names none."""
    return str(obj.get("metadata", {}).get("namespace") or default)


def find(objects: Iterable[dict[str, Any]], kind: str, name: str,
         namespace: str) -> dict[str, Any] | None:
    """The object of that kind, name and namespace, or None."""
    for obj in objects:
        meta = obj.get("metadata", {})
        if obj.get("kind") == kind and meta.get("name") == name and \
                namespace_of(obj, "default") == namespace:
            return obj
    return None


def services_for(objects: Iterable[dict[str, Any]], labels: Mapping[str, str],
                 namespace: str) -> list[dict[str, Any]]:
    """The Services of `namespace` whose selector matches these pod labels."""
    found = []
    for obj in objects:
        selector = obj.get("spec", {}).get("selector") or {}
        if obj.get("kind") == "Service" and namespace_of(obj, "default") == namespace and \
                selector and all(labels.get(k) == v for k, v in selector.items()):
            found.append(obj)
    return found


def hosts_of(service: str, namespace: str) -> set[str]:
    """Every way a VirtualService's `hosts` may name a Service."""
    return {service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"}


def clean_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata fit to write back: without what the API server owns (uid, resourceVersion,
    managedFields, …) and the annotations of controllers and `kubectl apply`."""
    out = {k: copy.deepcopy(v) for k, v in meta.items() if k not in _DROP_METADATA}
    annotations = {k: v for k, v in (out.get("annotations") or {}).items()
                   if not k.startswith(("deployment.kubernetes.io/",
                                        "kubectl.kubernetes.io/last-applied"))}
    if annotations:
        out["annotations"] = annotations
    else:
        out.pop("annotations", None)
    return out


def containers_of(dep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Deployment's pod template."""
    return list(dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [])


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a non-empty Service `selector` selects pods with `labels`."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def baseline_deployments(objects: Iterable[dict[str, Any]], service: Mapping[str, Any],
                         namespace: str) -> list[dict[str, Any]]:
    """The baseline's Deployments (not a sandbox's) whose pods `service` selects."""
    selector = service.get("spec", {}).get("selector") or {}
    return [o for o in objects if o.get("kind") == "Deployment"
            and namespace_of(o, "default") == namespace
            and SANDBOX_LABEL not in (o.get("metadata", {}).get("labels") or {})
            and selects(selector, o.get("spec", {}).get("template", {}).get("metadata", {})
                        .get("labels", {}))]


def original_target_ports(service: Mapping[str, Any],
                          deployment: Mapping[str, Any] | None) -> dict[int, int]:
    """Service port -> the container port the application listens on: the targetPort before
    the router was put in front (kept in an annotation), a named targetPort resolved against
    the Deployment's containers, or the port itself when no targetPort is given."""
    kept = (service.get("metadata", {}).get("annotations") or {}).get(TARGET_PORTS_ANNOTATION)
    out = {int(k): int(v) for k, v in json.loads(kept).items()} if kept else {}
    named = {str(p["name"]): int(p["containerPort"])
             for c in (containers_of(deployment) if deployment else [])
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
    (its name, else its number) for a Service with several ports. The router sidecar listens
    under the same name, whatever the port's protocol (`--listen pricing.shop:grpc=15081/grpc`)."""
    meta = service["metadata"]
    name = f"{meta['name']}.{namespace_of(service, 'default')}"
    ports = service.get("spec", {}).get("ports") or []
    return name if len(ports) == 1 else f"{name}:{port.get('name') or port['port']}"


def virtual_service_of(objects: Iterable[dict[str, Any]], svc_name: str,
                       namespace: str) -> dict[str, Any] | None:
    """The VirtualService routing a Service's host, if the namespace has one."""
    return next((o for o in objects if o.get("kind") == "VirtualService"
                 and namespace_of(o, "default") == namespace
                 and set(o.get("spec", {}).get("hosts", [])) & hosts_of(svc_name, namespace)),
                None)
