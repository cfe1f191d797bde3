"""Kubernetes, as pure functions: what the operator would create or patch for a sandbox, given
the baseline's manifests (forked Deployments, their Services, Istio VirtualService routes), and
the RE2 regexes that match a routing key in `baggage` and `tracestate` the way the routing
contract does. `laneway k8s render` prints them for review and GitOps."""

from laneway.core.kubernetes.objects import RenderError, load_manifests
from laneway.core.kubernetes.regex import baggage_regex, tracestate_regex
from laneway.core.kubernetes.render import render_sandbox

__all__ = ["RenderError", "baggage_regex", "load_manifests", "render_sandbox", "tracestate_regex"]
