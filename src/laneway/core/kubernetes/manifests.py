"""The CustomResourceDefinitions of `laneway.dev/v1alpha1` (Sandbox, RouteGroup): OpenAPI v3
schemas, status subresources and printer columns. `laneway k8s install --print` prints them."""

from __future__ import annotations

from typing import Any

from laneway.core.kubernetes.objects import Mode
from laneway.core.kubernetes.router_mode import DEFAULT_IMAGE, FEED_PORT

__all__ = ["GROUP", "VERSION", "crds", "install_manifests"]

GROUP = "laneway.dev"
VERSION = "v1alpha1"
_DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DURATION = "^([0-9]+(ms|s|m|h|d))+$"

_CONDITIONS = {
    "type": "array",
    "items": {"type": "object", "required": ["type", "status"], "properties": {
        "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False",
                                                                          "Unknown"]},
        "reason": {"type": "string"}, "message": {"type": "string"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0}}},
}
_LABELS = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}}
_ENV = {
    "description": "environment variables merged over the container's",
    "type": "array",
    "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "minLength": 1}, "value": {"type": "string"}}},
}

SANDBOX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["forks"],
            "properties": {
                "labels": _LABELS,
                "ttl": {"type": "string", "pattern": _DURATION,
                        "description": "delete the sandbox this long after creation (2h, 1d)"},
                "forks": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["workload"], "properties": {
                        "workload": {"type": "object", "required": ["name"], "properties": {
                            "kind": {"type": "string", "enum": ["Deployment"]},
                            "name": {"type": "string", "pattern": _DNS_LABEL},
                            "namespace": {"type": "string", "pattern": _DNS_LABEL}}},
                        "image": {"type": "string", "description": "the fork's image"},
                        "container": {"type": "string",
                                      "description": "which container (default: the first)"},
                        "env": _ENV}}},
            },
        },
        "status": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"routingKey": {"type": "string", "pattern": "^[a-z0-9]{12}$"},
                           "baggage": {"type": "string",
                                       "description": "the header value that selects it"},
                           "conditions": _CONDITIONS},
        },
    },
}

ROUTE_GROUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {"type": "object", "required": ["match"], "properties": {
            "labels": _LABELS,
            "match": {"type": "object", "required": ["labels"], "properties": {
                "labels": {"type": "object", "minProperties": 1,
                           "additionalProperties": {"type": "string"},
                           "description": "label globs a sandbox must all match"}}}}},
        "status": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "routingKey": {"type": "string", "pattern": "^[a-z0-9]{12}$"},
                "sandboxes": {"type": "array", "items": {"type": "string"}},
                "conflicts": {"type": "array", "items": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "conditions": _CONDITIONS},
        },
    },
}


def _crd(kind: str, plural: str, short: str, schema: dict[str, Any],
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}",
                     "labels": {"app.kubernetes.io/part-of": "laneway"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                      "shortNames": [short], "categories": ["laneway"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
            }],
        },
    }


def crds() -> list[dict[str, Any]]:
    ready = {"name": "Ready", "type": "string",
             "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}
    reason = {"name": "Reason", "type": "string",
              "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"}
    key = {"name": "Key", "type": "string", "jsonPath": ".status.routingKey"}
    age = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    return [
        _crd("Sandbox", "sandboxes", "lwsb", SANDBOX_SCHEMA,
             [key, ready, reason, {"name": "TTL", "type": "string", "jsonPath": ".spec.ttl"},
              age]),
        _crd("RouteGroup", "routegroups", "lwrg", ROUTE_GROUP_SCHEMA, [key, ready, reason, age]),
    ]


def install_manifests(namespace: str = "laneway-system", image: str = DEFAULT_IMAGE,
                      mode: Mode = "istio") -> list[dict[str, Any]]:
    """CRDs, least-privilege RBAC, the operator Deployment (`kopf run`, standalone) and its
    Service (the laneway API; in router mode also the routes feed the sidecars follow and
    where they send their hop records)."""
    labels = {"app.kubernetes.io/name": "laneway-operator", "app.kubernetes.io/part-of":
              "laneway"}
    rules = [
        # create and update: the operator's API applies them for its users (after asking the
        # API server whether the user may, with a SubjectAccessReview).
        {"apiGroups": [GROUP], "resources": ["sandboxes", "routegroups"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": [GROUP], "resources": ["sandboxes/status", "routegroups/status"],
         "verbs": ["get", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["services"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        # kopf discovers the resources it serves and the namespaces it watches.
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        # The operator's API and routes feed check bearer tokens with a TokenReview: users'
        # (audience laneway-api) and the sidecars' (audience laneway-routes).
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
         "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
         "verbs": ["create"]},
        # Callers are named by pod IP (leaks by caller), and in Istio mode forks reached are
        # read from the fork pods' own sidecar stats; read only.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    ]
    env = [{"name": "LANEWAY_ROUTING_MODE", "value": mode},
           {"name": "LANEWAY_ROUTER_IMAGE", "value": image},
           {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.namespace"}}}]
    # One port for the laneway API (the CLI's and MCP's, `laneway context add --k8s`), the
    # sidecars' routes feed and their hop records.
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "laneway-operator", "namespace": namespace,
                            "labels": labels},
               "spec": {"selector": labels, "ports": [{"name": "http", "port": FEED_PORT,
                                                       "targetPort": FEED_PORT}]}}
    return [
        *crds(),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "laneway-operator", "namespace": namespace, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "laneway-operator", "labels": labels}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "laneway-operator", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "laneway-operator"},
         "subjects": [{"kind": "ServiceAccount", "name": "laneway-operator",
                       "namespace": namespace}]},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "laneway-operator", "namespace": namespace, "labels": labels},
         "spec": {
             "replicas": 1,
             "strategy": {"type": "Recreate"},  # one operator at a time (kopf --standalone)
             "selector": {"matchLabels": labels},
             "template": {"metadata": {"labels": labels}, "spec": {
                 "serviceAccountName": "laneway-operator",
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                 "containers": [{
                     "name": "operator",
                     "image": image,
                     "command": ["kopf", "run", "--standalone", "--all-namespaces", "-m",
                                 "laneway.runtime.kubernetes.handlers"],
                     "env": env,
                     "ports": [{"name": "http", "containerPort": FEED_PORT}],
                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": FEED_PORT},
                                        "periodSeconds": 5},
                     "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                                   "limits": {"memory": "256Mi"}},
                     "securityContext": {"allowPrivilegeEscalation": False,
                                         "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]},
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                 }]}},
         }},
        service,
        # Users' rights on sandboxes, added to Kubernetes' own `edit`/`admin` and `view` roles
        # (aggregation): whoever may edit a namespace may make sandboxes in it, through kubectl
        # or the operator's API (which asks with a SubjectAccessReview).
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "laneway-edit", "labels": {
             **labels, "rbac.authorization.k8s.io/aggregate-to-edit": "true",
             "rbac.authorization.k8s.io/aggregate-to-admin": "true"}},
         "rules": [{"apiGroups": [GROUP], "resources": ["sandboxes", "routegroups"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch",
                              "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "laneway-view", "labels": {
             **labels, "rbac.authorization.k8s.io/aggregate-to-view": "true"}},
         "rules": [{"apiGroups": [GROUP], "resources": ["sandboxes", "routegroups"],
                    "verbs": ["get", "list", "watch"]}]},
    ]
