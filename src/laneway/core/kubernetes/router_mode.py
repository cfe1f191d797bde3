"""Routing mode `router`, for clusters without a mesh: the laneway router as a sidecar in the
baseline pods of every forked Service, in front of their HTTP ports: HTTP/1.1, HTTP/2 (h2c) and
gRPC.

Which ports, and how the router talks to the application behind each, follows Istio's protocol
selection, which teams already write for: a port's `appProtocol` wins, else its name
`<protocol>[-<suffix>]` (`http`, `http-admin`, `grpc-api`, `grpc-web`, `http2-x`), plus
Kubernetes' standard appProtocols `kubernetes.io/h2c`, `kubernetes.io/ws` and
`kubernetes.io/wss`. HTTP and WebSocket ports are reached over HTTP/1.1 (`http`), http2/h2c ports
over HTTP/2 with prior knowledge (`h2c`), grpc and grpc-web ports over HTTP/2 too (`grpc`). TLS
(https, tls, wss) and plain TCP protocols (tcp, mongo, mysql, redis, …) are left alone: the
router reads the routing key from HTTP headers. Each port left alone is named, with the reason,
in the Service's annotation `laneway.dev/unrouted-ports`.

The sidecar is told each listener's protocol on its command line: `--listen SERVICE=PORT` for
HTTP/1.1 (the form HTTP-only pods have always had, so an upgrade does not restart them) and
`--listen SERVICE=PORT/h2c` or `SERVICE=PORT/grpc` otherwise; `/` as in `8080/tcp`, since `:`
already separates a Service from its port name (`orders.shop:grpc`) and a host from its port.

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

from laneway.core.images import DEFAULT_IMAGE  # re-exported: the renderer's default
from laneway.core.kubernetes.objects import (
    ROUTER_LABEL,
    TARGET_PORTS_ANNOTATION,
    UNROUTED_PORTS_ANNOTATION,
    RenderError,
    baseline_deployments,
    clean_metadata,
    containers_of,
    namespace_of,
    original_target_ports,
    services_for,
    table_service,
)
from laneway.core.spec import ServiceProtocol

__all__ = ["DEFAULT_IMAGE", "FEED_PORT", "TOKEN_AUDIENCE", "RouterSidecar", "inject_router",
           "router_protocol", "strip_router"]

ROUTER_CONTAINER = "laneway-router"
TOKEN_VOLUME = "laneway-routes-token"  # noqa: S105 - names, not secrets
TOKEN_AUDIENCE = "laneway-routes"  # noqa: S105
TOKEN_DIR = "/var/run/secrets/laneway"  # noqa: S105
ROUTER_FIRST_PORT = 15080
FEED_PORT = 8790


@dataclass(frozen=True, slots=True)
class RouterSidecar:
    """What router mode injects: the image (with laneway installed) and where the operator's
    routes feed is."""

    image: str = DEFAULT_IMAGE
    operator_namespace: str = "laneway-system"

    @property
    def feed_url(self) -> str:
        return f"http://laneway-operator.{self.operator_namespace}.svc:{FEED_PORT}/v1/routes"

    @property
    def hops_url(self) -> str:
        return f"http://laneway-operator.{self.operator_namespace}.svc:{FEED_PORT}/v1/hops"


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


# Istio's protocols (appProtocol, or a port name's prefix) and Kubernetes' standard appProtocols
# the router serves -> how it reaches the application. grpc-web is HTTP/2 upstream, as in Istio.
_ROUTED: dict[str, ServiceProtocol] = {
    "http": "http", "kubernetes.io/ws": "http",
    "http2": "h2c", "h2c": "h2c", "kubernetes.io/h2c": "h2c",
    "grpc": "grpc", "grpc-web": "grpc",
}
_TLS = frozenset({"https", "tls", "kubernetes.io/wss"})
# Istio's protocols that are not HTTP (https and tls are in _TLS).
_NOT_HTTP = frozenset({"tcp", "mongo", "mysql", "redis", "thrift", "udp"})
# Unnamed ports Istio takes for TCP instead of sniffing them (SMTP, DNS, MySQL, MongoDB):
# putting the router in front would break them.
_WELL_KNOWN_TCP = {25: "SMTP", 53: "DNS", 3306: "MySQL", 27017: "MongoDB"}
_NAME_IT = ("name it <protocol>[-<suffix>] with http, http2, h2c, grpc or grpc-web, or set "
            "appProtocol")


def router_protocol(port: Mapping[str, Any]) -> tuple[ServiceProtocol | None, str]:
    """How the router reaches the application behind a Service port (`http`, `h2c`, `grpc`),
    or None and why router mode leaves the port alone. By Istio's protocol selection: the
    `appProtocol` if set, else the name `<protocol>[-<suffix>]`; an unnamed TCP port is taken
    for HTTP/1.1, the common case, unless it is one Istio takes for TCP (3306, …)."""
    label = f"port {port.get('name') or port.get('port')}"
    if port.get("protocol", "TCP") != "TCP":
        return None, f"{label}: {port['protocol']}; the router proxies TCP only"
    app_protocol = str(port.get("appProtocol") or "")
    name = str(port.get("name") or "")
    if not app_protocol and not name:
        number = int(port.get("port") or 0)
        if number in _WELL_KNOWN_TCP:
            return None, (f"{label}: unnamed, and Istio takes {number} for TCP "
                          f"({_WELL_KNOWN_TCP[number]}); {_NAME_IT} if it is HTTP")
        return "http", ""
    source = f"appProtocol {app_protocol!r}" if app_protocol else f"name {name!r}"
    value = (app_protocol or name).lower()
    if value.startswith("grpc-web"):  # before the cut at '-', as Istio does
        value = "grpc-web"
    elif not value.startswith("kubernetes.io/"):
        value = value.split("-", 1)[0]
    if value in _ROUTED:
        return _ROUTED[value], ""
    if value in _TLS:
        return None, (f"{label}: {source} is TLS; the router cannot read the routing key in "
                      "encrypted traffic")
    if value in _NOT_HTTP:
        return None, (f"{label}: {source} is {value}, not HTTP; the router reads the routing "
                      "key from HTTP headers")
    return None, f"{label}: {source} names no protocol router mode routes ({_NAME_IT})"


def _routed(port: Mapping[str, Any]) -> bool:
    return router_protocol(port)[0] is not None


def _check_routable(service: Mapping[str, Any]) -> None:
    name = service["metadata"]["name"]
    if service.get("spec", {}).get("clusterIP") == "None":
        raise RenderError(f"Service {name} is headless (clusterIP: None): its callers reach "
                          "pods directly, so router mode cannot stand in front of it")
    ports = service.get("spec", {}).get("ports") or []
    if not any(_routed(p) for p in ports):
        reasons = "; ".join(router_protocol(p)[1] for p in ports)
        raise RenderError(f"Service {name} has no HTTP, HTTP/2 or gRPC port, so router mode "
                          f"has nothing to route ({reasons})")


def inject_router(objects: list[dict[str, Any]], services: list[dict[str, Any]],
                  namespace: str, sidecar: RouterSidecar) -> list[dict[str, Any]]:
    """The baseline Services of `services` pointed at the router (their HTTP ports), and
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
                protocol = router_protocol(port)[0]
                if svc["metadata"]["name"] not in injected or protocol is None:
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
                # HTTP/1.1 without a suffix: the arguments of HTTP-only pods stay as they were.
                listen = f"{number}" if protocol == "http" else f"{number}/{protocol}"
                listeners += ["--listen", f"{table_service(svc, port)}={listen}",
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
        routed = {int(p["port"]) for p in patched["spec"].get("ports") or [] if _routed(p)}
        unrouted = {str(p["port"]): router_protocol(p)[1]
                    for p in patched["spec"].get("ports") or [] if not _routed(p)}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                       if k != UNROUTED_PORTS_ANNOTATION}
        annotations[TARGET_PORTS_ANNOTATION] = json.dumps(
            {str(k): v for k, v in sorted(targets.items()) if k in routed})
        if unrouted:  # said where `kubectl describe service` shows it
            annotations[UNROUTED_PORTS_ANNOTATION] = json.dumps(unrouted)
        meta["annotations"] = annotations
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
                 "--hops", sidecar.hops_url, "--token-file", f"{TOKEN_DIR}/token"],
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
