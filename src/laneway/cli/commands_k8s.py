"""`laneway k8s render`: what the operator would create or patch for a sandbox, offline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from laneway.client import CliError
from laneway.core.keys import is_routing_key, new_routing_key
from laneway.core.kubernetes import RenderError, load_manifests, render_sandbox

__all__ = ["k8s_app"]

k8s_app = typer.Typer(help="Kubernetes: render sandboxes against baseline manifests.",
                      no_args_is_help=True)


@k8s_app.command("render")
def render(
    file: Annotated[Path, typer.Option("-f", "--file", help="A Sandbox (laneway.dev/v1alpha1)")],
    baseline: Annotated[Path, typer.Option(help="Folder of the baseline's manifests")],
    routing_key: Annotated[str | None, typer.Option(help="Keep this key (default: a new one)")]
    = None,
    mode: Annotated[str, typer.Option(help="Routing mode: istio")] = "istio",
) -> None:
    """Print, as multi-document YAML, the forked Deployments, their Services and the Istio
    VirtualServices (merged into the team's own) for one sandbox, for review and GitOps."""
    if mode != "istio":
        raise CliError(f"--mode {mode}: only istio can be rendered yet (router mode is planned)")
    if routing_key is not None and not is_routing_key(routing_key):
        raise CliError("--routing-key: must be 12 characters of a-z and 0-9")
    try:
        doc = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise CliError(f"{file}: cannot read the file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CliError(f"{file}: invalid YAML: {exc}") from exc
    if not baseline.is_dir():
        raise CliError(f"--baseline {baseline}: not a directory")
    key = routing_key or new_routing_key()
    try:
        objects = render_sandbox(doc if isinstance(doc, dict) else {}, load_manifests(baseline),
                                 key)
    except RenderError as exc:
        raise CliError(f"{file}: {exc}") from exc
    header = f"# laneway k8s render: sandbox {doc['metadata']['name']}, routing key {key}" + (
        "" if routing_key else " (new: pass --routing-key to keep it)")
    sys.stdout.write(header + "\n" + yaml.safe_dump_all(objects, sort_keys=False,
                                                         explicit_start=True))
    if not routing_key:
        print(f"routing key: {key} (generated)", file=sys.stderr)


@k8s_app.command("install")
def install(
    print_: Annotated[bool, typer.Option("--print", help="Print the manifests (for kubectl "
                                         "apply -f - or GitOps)")] = False,
    namespace: Annotated[str, typer.Option(help="Where the operator runs")] = "laneway-system",
    image: Annotated[str, typer.Option(help="An image with `pip install laneway[kubernetes]`")]
    = "laneway:dev",
) -> None:
    """The CRDs, least-privilege RBAC and the operator Deployment."""
    from laneway.core.kubernetes.manifests import install_manifests

    if not print_:
        raise CliError("only --print is supported: pipe it to `kubectl apply -f -`")
    sys.stdout.write(yaml.safe_dump_all(install_manifests(namespace, image), sort_keys=False,
                                        explicit_start=True))
