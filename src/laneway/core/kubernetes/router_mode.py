"""Routing mode `router`, for clusters without a mesh: the laneway router as a sidecar in the
baseline pods of every forked Service, in front of their HTTP/1.1 ports.

The Service's `targetPort`s point at the sidecar (the originals kept in an annotation); it
forwards to the application in the same pod (127.0.0.1) or, for a key with a fork, to the fork's
Service, as the operator's routes feed says. The injection is made once per Service and then
stays: removing it would restart the baseline's pods every time the last sandbox forking them
goes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from laneway.core.kubernetes.objects import (
    ROUTER_LABEL,
    TARGET_PORTS_ANNOTATION,
    RenderError,
    baseline_deployments,
    clean_metadata,
    containers_of,
    namespace_of,
    original_target_ports,
    services_for,
    table_service,
)

__all__ = ["DEFAULT_IMAGE", "FEED_PORT", "TOKEN_AUDIENCE", "RouterSidecar", "inject_router",
           "speaks_http1", "strip_router"]

ROUTER_CONTAINER = "laneway-router"
TOKEN_VOLUME = "laneway-routes-token"  # noqa: S105 - names, not secrets
TOKEN_AUDIENCE = "laneway-routes"  # noqa: S105
TOKEN_DIR = "/var/run/secrets/laneway"  # noqa: S105
ROUTER_FIRST_PORT = 15080
FEED_PORT = 8790
DEFAULT_IMAGE = "laneway:dev"


@dataclass(frozen=True, slots=True)
class RouterSidecar:
    """What router mode injects: the image (with laneway installed) and where the operator's
    routes feed is."""

    image: str = DEFAULT_IMAGE
    operator_namespace: str = "laneway-system"

    @property
    def feed_url(self) -> str:
        return f"http://laneway-operator.{self.operator_namespace}.svc:{FEED_PORT}/v1/routes"


def strip_router(dep: dict[str, Any]) -> None:
    """Remove the router sidecar (a fork copied from an injected baseline Deployment needs none:
    keyed requests reach it already routed)."""
    pod = dep.get("spec", {}).get("template", {}).get("spec", {})
    pod["containers"] = [c for c in pod.get("containers") or []
                         if c.get("name") != ROUTER_CONTAINER]
    if "volumes" in pod:
        pod["volumes"] = [v for v in pod["volumes"] if v.get("name") != TOKEN_VOLUME]
        if not pod["volumes"]:
            del pod["volumes"]


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


def inject_router(objects: list[dict[str, Any]], services: list[dict[str, Any]],
                  namespace: str, sidecar: RouterSidecar) -> list[dict[str, Any]]:
    """The baseline Services of `services` pointed at the router (their HTTP/1.1 ports), and
    every Deployment they select carrying it, listening for every injected Service that selects
    its pods. Ports are given by position among all ports of the Services selecting the pods,
    so they never move."""
    for svc in services:
        _check_routable(svc)
    injected = {svc["metadata"]["name"] for svc in services} | {
        o["metadata"]["name"] for o in objects
        if o.get("kind") == "Service" and namespace_of(o, "default") == namespace
        and (o["metadata"].get("labels") or {}).get(ROUTER_LABEL) == "on"}
    out: list[dict[str, Any]] = []
    deployments: dict[str, dict[str, Any]] = {}
    for svc in services:
        for dep in baseline_deployments(objects, svc, namespace):
            deployments.setdefault(dep["metadata"]["name"], dep)
    router_ports: dict[tuple[str, int], int] = {}  # (service, port) -> the router's port
    for dep_name, dep in sorted(deployments.items()):
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        selecting = sorted(services_for(objects, labels, namespace),
                           key=lambda o: str(o["metadata"]["name"]))
        listeners: list[str] = []
        ports: list[dict[str, Any]] = []
        slot = 0
        taken = {int(p["containerPort"]) for c in containers_of(dep)
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
        selected = baseline_deployments(objects, svc, namespace)
        if not selected:
            raise RenderError(f"Service {svc['metadata']['name']}: no Deployment has the pods "
                              "it selects; router mode puts the router in their pods")
        targets = original_target_ports(svc, selected[0])
        patched = copy.deepcopy(svc)
        patched.pop("status", None)
        meta = patched["metadata"] = clean_metadata(patched.get("metadata", {}))
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
    out["metadata"] = clean_metadata(out.get("metadata", {}))
    strip_router(out)
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
