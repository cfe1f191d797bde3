"""kopf handlers for `Sandbox` and `RouteGroup`: each runs a pass of `operator` and reports
through kopf, with explicit retry delays instead of kopf's 60 s default. The operator serves
the laneway API (`api`, port 8790) and, in router mode, on the same port the routes feed for
the router sidecars and their hop records; it republishes the table after a pass that changed
something, and every 30 s.

Settings come from the operator Deployment's environment: `LANEWAY_ROUTING_MODE` (istio or
router), `LANEWAY_ROUTER_IMAGE` (the sidecar's image), `POD_NAMESPACE` (where the feed's
Service is), `LANEWAY_API_ADDRESS` (where the API and feed listen, `0.0.0.0:8790` by default;
`LANEWAY_FEED_ADDRESS`, its older name, still works; tests give a loopback port),
`LANEWAY_DEFAULT_NAMESPACE` (the API's namespace when a request names none) and
`LANEWAY_API_TOKEN` (one more bearer token, allowed everything: a development operator).
Unit tests call the handlers over the in-memory cluster; `tests/integration/test_operator_http`
runs the whole operator against an API emulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Generator, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import uvicorn

from laneway.core.kubernetes.objects import SANDBOX_LABEL
from laneway.core.kubernetes.plan import FINALIZER, RETRY_ERROR_S, SandboxPlan
from laneway.core.kubernetes.router_mode import FEED_PORT, RouterSidecar
from laneway.runtime.kubernetes.api import ClusterApi, cluster_app
from laneway.runtime.kubernetes.cluster import Cluster, KubernetesCluster
from laneway.runtime.kubernetes.feed import TokenReviews, routes_endpoint
from laneway.runtime.kubernetes.operator import (
    OperatorSettings,
    RoutesPublisher,
    reconcile,
    reconcile_route_group,
)
from laneway.runtime.kubernetes.telemetry import PodTelemetry

__all__: list[str] = []

log = logging.getLogger("laneway.operator")

_mode = os.environ.get("LANEWAY_ROUTING_MODE", "istio")
if _mode not in ("istio", "router"):
    raise SystemExit(f"LANEWAY_ROUTING_MODE={_mode!r}: must be istio or router")
SETTINGS = OperatorSettings(
    mode="router" if _mode == "router" else "istio",
    sidecar=RouterSidecar(image=os.environ.get("LANEWAY_ROUTER_IMAGE", "laneway:dev"),
                          operator_namespace=os.environ.get("POD_NAMESPACE", "laneway-system")))
_clusters: list[Cluster] = []  # the cluster, made on first use (tests put their own here)
_publisher = RoutesPublisher()
_changed = asyncio.Event()


def _api() -> Cluster:
    if not _clusters:  # pragma: no cover - needs a cluster
        _clusters.append(KubernetesCluster())
    return _clusters[0]


def _note(plan: SandboxPlan, before: Mapping[str, Any] | None, status: Mapping[str, Any]) -> None:
    """Rebuild the routes table soon if this pass changed anything (objects or status)."""
    before = before or {}
    if plan.actions or any(before.get(k) != v for k, v in status.items()):
        _changed.set()


async def _publish_forever() -> None:  # pragma: no cover - needs a cluster
    # On a change (a little later, so that a burst of passes makes one rebuild), and every
    # 30 s in any case: the table is level-triggered like the passes.
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_changed.wait(), 30.0)
        await asyncio.sleep(0.2)
        _changed.clear()
        try:
            _publisher.publish(await asyncio.to_thread(_publisher.build, _api()))
        except Exception:  # the API server is away: the routers keep their last table
            log.warning("routes table not rebuilt; trying again", exc_info=True)
            await asyncio.sleep(2.0)


class _ApiServer(uvicorn.Server):  # pragma: no cover
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # kopf owns signal handling


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # A handler that fails (the API server refused a write, say) runs again after 10 s, not
    # kopf's 60 s; a broken watch stream is retried within seconds.
    settings.execution.default_backoff = RETRY_ERROR_S
    settings.queueing.error_delays = [1, 2, 5, 10, 10, 30]


@kopf.on.startup()
async def serve(memo: kopf.Memo, **_: Any) -> None:  # pragma: no cover - needs an API server
    """The laneway API (and in router mode the routes feed and the hops' way in)."""
    cluster = _api()
    assert isinstance(cluster, KubernetesCluster)
    routers = TokenReviews(cluster.review_token)
    state = ClusterApi(
        cluster, SETTINGS.mode,
        default_namespace=os.environ.get("LANEWAY_DEFAULT_NAMESPACE", "default"),
        dev_token=os.environ.get("LANEWAY_API_TOKEN") or None,
        telemetry=PodTelemetry() if SETTINGS.mode == "istio" else None)
    routes = routes_endpoint(_publisher.feed, None) if SETTINGS.mode == "router" else None
    app = cluster_app(state, routes, routers.allows)
    address = os.environ.get("LANEWAY_API_ADDRESS") or os.environ.get(
        "LANEWAY_FEED_ADDRESS", f"0.0.0.0:{FEED_PORT}")
    host, port = address.rpartition(":")[0], address.rpartition(":")[2]
    server = _ApiServer(uvicorn.Config(app, host=host, port=int(port),
                                        log_level="warning", lifespan="off",
                                        timeout_graceful_shutdown=2))
    memo.tasks = [asyncio.create_task(_serve_api(server, address))]
    if SETTINGS.mode == "router":
        memo.tasks.append(asyncio.create_task(_publish_forever()))


async def _serve_api(server: uvicorn.Server, address: str) -> None:  # pragma: no cover
    """Serve until cancelled. A port that cannot be bound costs the API, not the reconciling
    (uvicorn exits on a bind error: that exit is caught here and said in the log)."""
    try:
        await server.serve()
    except (SystemExit, OSError) as exc:
        log.error("the laneway API cannot listen on %s (%s): sandboxes are still reconciled; "
                  "set LANEWAY_API_ADDRESS to a free address", address, exc)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:  # pragma: no cover
    for task in getattr(memo, "tasks", []):
        task.cancel()


@kopf.on.resume("laneway.dev", "v1alpha1", "sandboxes", backoff=RETRY_ERROR_S)
@kopf.on.create("laneway.dev", "v1alpha1", "sandboxes", backoff=RETRY_ERROR_S)
@kopf.on.update("laneway.dev", "v1alpha1", "sandboxes", backoff=RETRY_ERROR_S)
@kopf.timer("laneway.dev", "v1alpha1", "sandboxes", interval=30.0, backoff=RETRY_ERROR_S)
async def sandbox_changed(body: kopf.Body, patch: kopf.Patch,
                          **_: Any) -> None:
    # The official client blocks: each pass runs in a thread, off the operator's loop.
    plan, status = await asyncio.to_thread(reconcile, body, _api(), None, SETTINGS)
    if any(a.verb == "delete-sandbox" for a in plan.actions):  # its TTL has passed
        await asyncio.to_thread(_api().apply, "delete", "Sandbox", str(body.metadata.namespace),
                                str(body.metadata.name), None)
    _report(plan, body, status, patch)


@kopf.on.event("apps", "v1", "deployments", labels={SANDBOX_LABEL: kopf.PRESENT})
async def fork_deployment_event(namespace: str | None, labels: kopf.Labels,
                                **_: Any) -> None:
    """A fork's Deployment changed (a pod became available, or went away): pass over its
    Sandbox now, so `Ready` turns True when the forks serve, not at the next resync."""
    api = _api()
    name = labels[SANDBOX_LABEL]
    try:
        sandbox = await asyncio.to_thread(api.get, "Sandbox", str(namespace), name)
    except Exception:  # the API server is away: the Sandbox's own handlers cope
        log.warning("sandbox %s/%s not read", namespace, name, exc_info=True)
        return
    if sandbox is None or sandbox.get("metadata", {}).get("deletionTimestamp"):
        return
    plan, status = await asyncio.to_thread(reconcile, sandbox, api, None, SETTINGS)
    await asyncio.to_thread(api.patch_status, "Sandbox", str(namespace), name, status)
    _note(plan, sandbox.get("status"), status)


@kopf.on.delete("laneway.dev", "v1alpha1", "sandboxes", backoff=RETRY_ERROR_S)
async def sandbox_deleted(body: kopf.Body, **_: Any) -> None:
    await asyncio.to_thread(reconcile, _deleting(body), _api(), None, SETTINGS)
    _changed.set()


@kopf.on.resume("laneway.dev", "v1alpha1", "routegroups", backoff=RETRY_ERROR_S)
@kopf.on.create("laneway.dev", "v1alpha1", "routegroups", backoff=RETRY_ERROR_S)
@kopf.on.update("laneway.dev", "v1alpha1", "routegroups", backoff=RETRY_ERROR_S)
@kopf.timer("laneway.dev", "v1alpha1", "routegroups", interval=10.0, backoff=RETRY_ERROR_S)
async def route_group_changed(body: kopf.Body, patch: kopf.Patch,
                              **_: Any) -> None:
    plan, status = await asyncio.to_thread(reconcile_route_group, body, _api(), SETTINGS)
    _report(plan, body, status, patch)


@kopf.on.delete("laneway.dev", "v1alpha1", "routegroups", backoff=RETRY_ERROR_S)
async def route_group_deleted(body: kopf.Body, **_: Any) -> None:
    await asyncio.to_thread(reconcile_route_group, _deleting(body), _api(), SETTINGS)
    _changed.set()


def _deleting(body: kopf.Body) -> dict[str, Any]:
    """The object as a pass plans its removal (kopf calls on.delete with the finalizer held)."""
    return {**body, "metadata": {**body["metadata"],
                                 "deletionTimestamp": datetime.now(UTC).isoformat()}}


def _report(plan: SandboxPlan, body: kopf.Body, status: Mapping[str, Any],
            patch: kopf.Patch) -> None:
    """A pass's status through kopf's patch; a render failure retried after an explicit delay."""
    patch.status.update(status)
    _note(plan, body.get("status"), status)
    if plan.conditions and plan.conditions[0]["reason"] == "RenderFailed":
        raise kopf.TemporaryError(plan.conditions[0]["message"],
                                  delay=plan.requeue_after or RETRY_ERROR_S)
