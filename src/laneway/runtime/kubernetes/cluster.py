"""The one interface the operator uses to read and change a cluster, with an in-memory
implementation (for tests of the executor) and the real one on the official Kubernetes client.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["Cluster", "KubernetesCluster", "MemoryCluster"]

_ISTIO = ("networking.istio.io", "v1", "virtualservices")


class Cluster(Protocol):
    def objects(self, namespace: str) -> list[dict[str, Any]]:
        """Deployments, Services and VirtualServices of a namespace."""

    def apply(self, verb: str, kind: str, namespace: str, name: str,
              body: Mapping[str, Any] | None) -> None: ...


def _key(kind: str, namespace: str, name: str) -> tuple[str, str, str]:
    return kind, namespace, name


class MemoryCluster:
    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.store = {_key(o["kind"], o["metadata"].get("namespace", "default"),
                           o["metadata"]["name"]): copy.deepcopy(o) for o in objects}
        self.log: list[tuple[str, str, str]] = []

    def objects(self, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (_, ns, _), o in self.store.items() if ns == namespace]

    def apply(self, verb: str, kind: str, namespace: str, name: str,
              body: Mapping[str, Any] | None) -> None:
        self.log.append((verb, kind, name))
        if verb == "delete":
            self.store.pop(_key(kind, namespace, name), None)
        elif body is not None:
            self.store[_key(kind, namespace, name)] = copy.deepcopy(dict(body))


class KubernetesCluster:  # pragma: no cover - needs a cluster; the executor is tested in memory
    def __init__(self) -> None:
        from kubernetes import client
        from kubernetes import config as kube_config

        config: Any = kube_config  # its loaders are untyped
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        # Typed loosely on purpose: bodies are plain dicts, as the API server takes them.
        self.apps: Any = client.AppsV1Api()
        self.core: Any = client.CoreV1Api()
        self.custom: Any = client.CustomObjectsApi()
        self.api: Any = client.ApiClient()

    def objects(self, namespace: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in self.apps.list_namespaced_deployment(namespace).items:
            out.append({"apiVersion": "apps/v1", "kind": "Deployment",
                        **self.api.sanitize_for_serialization(item)})
        for item in self.core.list_namespaced_service(namespace).items:
            out.append({"apiVersion": "v1", "kind": "Service",
                        **self.api.sanitize_for_serialization(item)})
        group, version, plural = _ISTIO
        try:
            found = self.custom.list_namespaced_custom_object(group, version, namespace, plural)
            out += [dict(item) for item in found.get("items", [])]
        except Exception:  # noqa: S110 - no Istio in this cluster: nothing to merge into
            pass
        return out

    def apply(self, verb: str, kind: str, namespace: str, name: str,
              body: Mapping[str, Any] | None) -> None:
        if kind == "Deployment":
            ops = {"create": lambda: self.apps.create_namespaced_deployment(namespace, body),
                   "replace": lambda: self.apps.patch_namespaced_deployment(name, namespace,
                                                                            body),
                   "delete": lambda: self.apps.delete_namespaced_deployment(name, namespace)}
        elif kind == "Service":
            ops = {"create": lambda: self.core.create_namespaced_service(namespace, body),
                   "replace": lambda: self.core.patch_namespaced_service(name, namespace, body),
                   "delete": lambda: self.core.delete_namespaced_service(name, namespace)}
        else:
            group, version, plural = _ISTIO
            ops = {
                "create": lambda: self.custom.create_namespaced_custom_object(
                    group, version, namespace, plural, body),
                "patch": lambda: self.custom.patch_namespaced_custom_object(
                    group, version, namespace, plural, name, {"spec": dict(body or {})["spec"]}),
                "delete": lambda: self.custom.delete_namespaced_custom_object(
                    group, version, namespace, plural, name)}
        ops[verb]()
