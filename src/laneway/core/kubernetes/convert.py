"""A plain sandbox file, as people write it, into the `Sandbox` custom resource.

The plain file has the local sandbox's shape, with Kubernetes' idea of a fork:

    name: pricing-v2
    namespace: shop                # optional: default, or --namespace
    labels: {feature: discounts}
    ttl: 2h
    forks:
      - workload: pricing          # a Deployment's name, or {name, namespace, kind: Deployment}
        image: registry/pricing:pr-42
        container: app             # optional: the first container by default
        env: {DISCOUNT: "20"}      # or [{name: DISCOUNT, value: "20"}, {name, valueFrom}]

`sandbox_resource` gives the custom resource for either shape (a `Sandbox` resource is
checked and passed through), so that `laneway k8s render` reads what users have and `laneway
k8s convert` prints what GitOps stores. Fields that only mean something for a process on this
machine (`run`, `address`, `cwd`, ...) are refused with why, never ignored.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from laneway.core.duration import parse_duration
from laneway.core.kubernetes.objects import RenderError
from laneway.core.spec import DNS_LABEL_RE

__all__ = ["check_spec", "sandbox_resource"]

API_VERSION = "laneway.dev/v1alpha1"
_TOP = ("name", "namespace", "labels", "ttl", "forks", "capture")
_FORK = ("workload", "image", "container", "env")
_WORKLOAD = ("kind", "name", "namespace")
# A local fork's fields: a process on this machine, which a Deployment's fork has no use for.
_LOCAL_ONLY = {
    "service": "a fork on Kubernetes names its Deployment: `workload: NAME`",
    "run": "a fork on Kubernetes runs an image: give `image` (and `env`)",
    "shell": "a fork on Kubernetes runs an image: give `image` (and `env`)",
    "address": "an address is a process on your machine; a cluster cannot route to it",
    "cwd": "a fork on Kubernetes runs an image, not a folder of this machine",
    "health": "the Deployment's own readiness probe is the fork's health check",
    "startup_timeout": "the Deployment's own probes decide when a fork is ready",
}


def _unknown(field: str, allowed: tuple[str, ...], path: str) -> RenderError:
    close = difflib.get_close_matches(field, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"the fields here are: {', '.join(allowed)}"
    return RenderError(f"{path}{field}: unknown field; {hint}")


def _env(env: Any, path: str) -> list[dict[str, Any]] | None:
    if env is None:
        return None
    if isinstance(env, Mapping):
        return [{"name": str(k), "value": "" if v is None else str(v)} for k, v in env.items()]
    if isinstance(env, list):
        out = []
        for i, item in enumerate(env):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise RenderError(f"{path}[{i}]: must be {{name: NAME, value: VALUE}} (or "
                                  "valueFrom)")
            out.append(dict(item))
        return out
    raise RenderError(f"{path}: must be a mapping NAME: value or a list of {{name, value}}")


def _fork(fork: Any, i: int) -> dict[str, Any]:
    path = f"forks[{i}]."
    if not isinstance(fork, Mapping):
        raise RenderError(f"forks[{i}]: must be a mapping (workload, image, container, env)")
    for field in fork:
        if field in _LOCAL_ONLY:
            raise RenderError(f"{path}{field}: only for forks on this machine; "
                              f"{_LOCAL_ONLY[field]}")
        if field not in _FORK:
            raise _unknown(str(field), _FORK, path)
    workload = fork.get("workload")
    if isinstance(workload, str):
        workload = {"name": workload}
    if not isinstance(workload, Mapping) or not isinstance(workload.get("name"), str):
        raise RenderError(f"{path}workload: must name a Deployment: `workload: NAME` or "
                          "{name: NAME, namespace: NS}")
    for field in workload:
        if field not in _WORKLOAD:
            raise _unknown(str(field), _WORKLOAD, f"{path}workload.")
    if workload.get("kind", "Deployment") != "Deployment":
        raise RenderError(f"{path}workload.kind: only Deployment is supported")
    out: dict[str, Any] = {"workload": {"kind": "Deployment", **dict(workload)}}
    for field in ("image", "container"):
        value = fork.get(field)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise RenderError(f"{path}{field}: must be a non-empty string")
            out[field] = value
    env = _env(fork.get("env"), f"{path}env")
    if env is not None:
        out["env"] = env
    return out


def sandbox_resource(doc: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
    """The `Sandbox` custom resource of `doc` (a plain sandbox file, or the resource itself).
    `namespace`: where it goes when the file names none (None: `default`)."""
    if "kind" in doc or "apiVersion" in doc:
        if doc.get("kind") != "Sandbox" or doc.get("apiVersion") != API_VERSION:
            raise RenderError(f"kind: a custom resource here must be kind Sandbox, apiVersion "
                              f"{API_VERSION} (or write the plain sandbox file: name, forks)")
        resource = dict(doc)
        if namespace and not (resource.get("metadata") or {}).get("namespace"):
            resource["metadata"] = {**(resource.get("metadata") or {}), "namespace": namespace}
        check_spec(resource.get("spec") or {})
        return resource
    for field in doc:
        if field not in _TOP:
            raise _unknown(str(field), _TOP, "")
    name = doc.get("name")
    if not isinstance(name, str) or not DNS_LABEL_RE.match(name) or len(name) > 40:
        raise RenderError("name: must be a DNS label (a-z, 0-9, '-') of at most 40 characters")
    ns = doc.get("namespace") or namespace or "default"
    if not isinstance(ns, str) or not DNS_LABEL_RE.match(ns):
        raise RenderError("namespace: must be a DNS label")
    forks = doc.get("forks")
    if not isinstance(forks, list) or not forks:
        raise RenderError("forks: must list at least one fork (workload, image, env)")
    spec: dict[str, Any] = {}
    labels = doc.get("labels")
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise RenderError("labels: must be a mapping key: value")
        spec["labels"] = {str(k): str(v) for k, v in labels.items()}
    if doc.get("ttl") is not None:
        spec["ttl"] = str(doc["ttl"])
    spec["forks"] = [_fork(fork, i) for i, fork in enumerate(forks)]
    for i, fork in enumerate(spec["forks"]):
        fork_ns = fork["workload"].get("namespace")
        if fork_ns is not None and fork_ns != ns:
            raise RenderError(f"forks[{i}].workload.namespace: must be the sandbox's own "
                              f"({ns}): its forks are owned by it, and owner references "
                              "cannot cross namespaces")
    if doc.get("capture") is not None:
        raise RenderError("capture: not available on Kubernetes yet (responses are captured by "
                          "the local router)")
    check_spec(spec)
    return {"apiVersion": API_VERSION, "kind": "Sandbox",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def check_spec(spec: Mapping[str, Any]) -> None:
    """What a `Sandbox`'s spec must hold beyond its schema: a TTL that is a duration, and each
    workload forked once (two forks of one Deployment would be one fork Deployment that each
    pass rewrites, rolling out forever)."""
    ttl = spec.get("ttl")
    if ttl is not None:
        try:
            parse_duration(str(ttl))
        except ValueError as exc:
            raise RenderError(f"ttl: {exc}") from exc
    seen: dict[str, int] = {}
    for i, fork in enumerate(spec.get("forks") or []):
        workload = fork.get("workload") if isinstance(fork, Mapping) else None
        name = workload.get("name") if isinstance(workload, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            raise RenderError(f"forks[{i}].workload: {name} is forked by forks[{seen[name]}] "
                              "already; one fork per Deployment (put its image and env "
                              "together)")
        seen[name] = i
