"""The one interface the operator uses to read and change a cluster, with an in-memory
implementation (for tests of the executor; it allocates cluster IPs as the API server does) and
the real one on the official Kubernetes client.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any, Protocol

from laneway.core.kubernetes.objects import ROUTER_LABEL, SANDBOX_LABEL

__all__ = ["Cluster", "KubernetesCluster", "MemoryCluster"]

_ISTIO = ("networking.istio.io", "v1", "virtualservices")
_LANEWAY = ("laneway.dev", "v1alpha1")
PLURALS = {"Sandbox": "sandboxes", "RouteGroup": "routegroups"}


class Cluster(Protocol):
    def objects(self, namespace: str, sandbox: str | None = None) -> list[dict[str, Any]]:
        """What a pass reads in a namespace: its Deployments and Services that belong to no
        sandbox (the baseline), those of `sandbox`, and its VirtualServices. Never the other
        sandboxes' forks: a pass costs the same with 10 sandboxes or 1,000."""

    def custom(self, kind: str) -> list[dict[str, Any]]:
        """Every `Sandbox` or `RouteGroup`, in all namespaces."""

    def routed(self) -> list[dict[str, Any]]:
        """What router mode's table is made of, in all namespaces: Services behind the router
        (`laneway.dev/router=on`), the forks' Deployments and Services, and the Pods of both
        (their IPs name the callers of hops)."""

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One `Sandbox` or `RouteGroup`, or None when there is none."""

    def patch_status(self, kind: str, namespace: str, name: str,
                     status: Mapping[str, Any]) -> None: ...

    def apply(self, verb: str, kind: str, namespace: str, name: str,
              body: Mapping[str, Any] | None) -> None:
        """create/replace/patch/delete a Deployment, Service or VirtualService; delete a
        Sandbox (an expired one)."""


def _key(kind: str, namespace: str, name: str) -> tuple[str, str, str]:
    return kind, namespace, name


class MemoryCluster:
    def __init__(self, objects: list[dict[str, Any]], service_ips: str = "10.96.0.") -> None:
        self.store = {_key(o["kind"], o["metadata"].get("namespace", "default"),
                           o["metadata"]["name"]): copy.deepcopy(o) for o in objects}
        self.log: list[tuple[str, str, str]] = []
        self._ips = (f"{service_ips}{n}" for n in itertools.count(10))

    def objects(self, namespace: str, sandbox: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (kind, ns, _), o in self.store.items()
                if ns == namespace and kind not in PLURALS and kind != "Pod"
                and (o["metadata"].get("labels") or {}).get(SANDBOX_LABEL) in (None, sandbox)]

    def custom(self, kind: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _, _), o in self.store.items() if k == kind]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.store.get(_key(kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def patch_status(self, kind: str, namespace: str, name: str,
                     status: Mapping[str, Any]) -> None:
        self.log.append(("patch-status", kind, name))
        found = self.store.get(_key(kind, namespace, name))
        if found is not None:
            found["status"] = {**(found.get("status") or {}), **copy.deepcopy(dict(status))}

    def routed(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (kind, _, _), o in self.store.items()
                if kind == "Pod" or (kind in ("Deployment", "Service") and (
                    {ROUTER_LABEL, SANDBOX_LABEL} & set(o["metadata"].get("labels") or {})))]

    def apply(self, verb: str, kind: str, namespace: str, name: str,
              body: Mapping[str, Any] | None) -> None:
        self.log.append((verb, kind, name))
        key = _key(kind, namespace, name)
        if verb == "delete":
            self.store.pop(key, None)
        elif body is not None:
            obj = copy.deepcopy(dict(body))
            if kind == "Service":  # the API server allocates a Service's address once
                spec = obj.setdefault("spec", {})
                spec["clusterIP"] = self.store.get(key, {}).get("spec", {}).get(
                    "clusterIP") or spec.get("clusterIP") or next(self._ips)
            self.store[key] = obj


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
        self.custom_api: Any = client.CustomObjectsApi()
        self.auth: Any = client.AuthenticationV1Api()
        self.authz: Any = client.AuthorizationV1Api()
        self.api: Any = client.ApiClient()

    def _plain(self, kind: str, api_version: str, items: Any) -> list[dict[str, Any]]:
        return [{"apiVersion": api_version, "kind": kind,
                 **self.api.sanitize_for_serialization(item)} for item in items]

    def objects(self, namespace: str, sandbox: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        selectors = [f"!{SANDBOX_LABEL}"] + ([f"{SANDBOX_LABEL}={sandbox}"] if sandbox else [])
        for selector in selectors:
            found = self._plain("Deployment", "apps/v1", self.apps.list_namespaced_deployment(
                namespace, label_selector=selector).items)
            found += self._plain("Service", "v1", self.core.list_namespaced_service(
                namespace, label_selector=selector).items)
            # Checked here too: an API emulation that ignores selectors must not make another
            # sandbox's forks look like the baseline (free against a real server).
            seen = {(o["kind"], o["metadata"]["name"]) for o in out}
            out += [o for o in found if (o["metadata"].get("labels") or {}).get(
                SANDBOX_LABEL) in (None, sandbox) and (o["kind"], o["metadata"]["name"])
                not in seen]
        from kubernetes.client.exceptions import ApiException

        group, version, plural = _ISTIO
        try:
            found = self.custom_api.list_namespaced_custom_object(group, version, namespace,
                                                                  plural)
            out += [dict(item) for item in found.get("items", [])]
        except ApiException as exc:
            if exc.status != 404:  # 404: no Istio in this cluster, nothing to merge into
                raise
        return out

    def custom(self, kind: str) -> list[dict[str, Any]]:
        found = self.custom_api.list_cluster_custom_object(*_LANEWAY, PLURALS[kind])
        return [dict(item) for item in found.get("items", [])]

    def routed(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for selector in (f"{ROUTER_LABEL}=on", SANDBOX_LABEL):
            out += self._plain("Service", "v1", self.core.list_service_for_all_namespaces(
                label_selector=selector).items)
        out += self._plain("Deployment", "apps/v1", self.apps.list_deployment_for_all_namespaces(
            label_selector=SANDBOX_LABEL).items)
        # The pods that may call: the forks' (by label), and those of each Service behind the
        # router (by its selector; not every pod of the cluster).
        out += self._plain("Pod", "v1", self.core.list_pod_for_all_namespaces(
            label_selector=SANDBOX_LABEL).items)
        for svc in [o for o in out if o["kind"] == "Service"
                    and (o["metadata"].get("labels") or {}).get(ROUTER_LABEL) == "on"]:
            selects: dict[str, str] = (svc.get("spec") or {}).get("selector") or {}
            if selects:
                out += self._plain("Pod", "v1", self.core.list_namespaced_pod(
                    svc["metadata"]["namespace"], label_selector=",".join(
                        f"{k}={v}" for k, v in sorted(selects.items()))).items)
        return out

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.custom_api.get_namespaced_custom_object(
                *_LANEWAY, namespace, PLURALS[kind], name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, kind: str, namespace: str, name: str,
                     status: Mapping[str, Any]) -> None:
        self.custom_api.patch_namespaced_custom_object_status(
            *_LANEWAY, namespace, PLURALS[kind], name, {"status": dict(status)})

    def namespaced(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        """The `Sandbox`es or `RouteGroup`s of one namespace."""
        found = self.custom_api.list_namespaced_custom_object(*_LANEWAY, namespace,
                                                              PLURALS[kind])
        return [dict(item) for item in found.get("items", [])]

    def put_custom(self, kind: str, namespace: str, name: str,
                   body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the `Sandbox` or `RouteGroup`, or replace its spec, labels and annotations
        (its status is the operator's); returns (the stored object, whether it was created).
        Replacing sends the read resourceVersion: a concurrent write is a 409, not lost."""
        existing = self.get(kind, namespace, name)
        if existing is None:
            return dict(self.custom_api.create_namespaced_custom_object(
                *_LANEWAY, namespace, PLURALS[kind], dict(body))), True
        # Labels and annotations merged: others' (kubectl label, GitOps tools) are kept.
        meta = {**existing["metadata"],
                "labels": {**(existing["metadata"].get("labels") or {}),
                           **(body["metadata"].get("labels") or {})},
                "annotations": {**(existing["metadata"].get("annotations") or {}),
                                **(body["metadata"].get("annotations") or {})}}
        replaced = {**existing, "metadata": meta, "spec": body.get("spec") or {}}
        return dict(self.custom_api.replace_namespaced_custom_object(
            *_LANEWAY, namespace, PLURALS[kind], name, replaced)), False

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self._plain("Pod", "v1", self.core.list_namespaced_pod(
            namespace, label_selector=selector).items)

    def identity(self, token: str, audience: str | None = None) -> dict[str, Any] | None:
        """Who `token` is, as the API server says (a TokenReview, for `audience` or else the
        server's own): a ServiceAccount's or a user's token alike; None when it is not valid
        (for that audience)."""
        spec: dict[str, Any] = {"token": token}
        if audience is not None:
            spec["audiences"] = [audience]
        review = self.auth.create_token_review({"apiVersion": "authentication.k8s.io/v1",
                                                "kind": "TokenReview", "spec": spec})
        status = review.status
        if not status.authenticated or status.user is None or (
                audience is not None and audience not in (status.audiences or [])):
            return None
        user = status.user
        return {"username": user.username or "", "groups": list(user.groups or []),
                "uid": user.uid or "", "extra": dict(user.extra or {})}

    def may(self, identity: Mapping[str, Any], verb: str, plural: str,
            namespace: str) -> bool:
        """Whether the API server lets `identity` do `verb` on laneway's `plural` in
        `namespace` (a SubjectAccessReview): the operator acts for its API's users with no
        more rights than their own."""
        review = self.authz.create_subject_access_review({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": identity.get("username"), "groups": identity.get("groups"),
                     "uid": identity.get("uid") or None, "extra": identity.get("extra") or None,
                     "resourceAttributes": {"group": _LANEWAY[0], "resource": plural,
                                            "verb": verb, "namespace": namespace}}})
        return bool(review.status.allowed)

    def review_token(self, token: str, audience: str) -> bool:
        """Whether the API server vouches for `token` with `audience` (a TokenReview)."""
        return self.identity(token, audience) is not None

    def apply(self, verb: str, kind: str, namespace: str, name: str,
              body: Mapping[str, Any] | None) -> None:
        # A fork's Deployment is laneway's alone: replaced whole, so an env var taken out of
        # the Sandbox goes too. A baseline Deployment (the router's injection) is the team's:
        # patched (strategic merge), so only what laneway adds changes.
        forked = SANDBOX_LABEL in ((body or {}).get("metadata", {}).get("labels") or {})
        if kind in PLURALS:
            ops = {"delete": lambda: self.custom_api.delete_namespaced_custom_object(
                *_LANEWAY, namespace, PLURALS[kind], name)}
        elif kind == "Deployment":
            ops = {"create": lambda: self.apps.create_namespaced_deployment(namespace, body),
                   "replace": lambda: (
                       self.apps.replace_namespaced_deployment if forked
                       else self.apps.patch_namespaced_deployment)(name, namespace, body),
                   "delete": lambda: self.apps.delete_namespaced_deployment(name, namespace)}
        elif kind == "Service":
            ops = {"create": lambda: self.core.create_namespaced_service(namespace, body),
                   "replace": lambda: self.core.patch_namespaced_service(name, namespace, body),
                   "delete": lambda: self.core.delete_namespaced_service(name, namespace)}
        else:
            group, version, plural = _ISTIO
            ops = {
                "create": lambda: self.custom_api.create_namespaced_custom_object(
                    group, version, namespace, plural, body),
                "patch": lambda: self.custom_api.patch_namespaced_custom_object(
                    group, version, namespace, plural, name, {"spec": dict(body or {})["spec"]}),
                "delete": lambda: self.custom_api.delete_namespaced_custom_object(
                    group, version, namespace, plural, name)}
        ops[verb]()
