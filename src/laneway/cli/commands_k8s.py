"""`laneway k8s render`: what the operator would create or patch for a sandbox, offline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from laneway.cli.output import console, table
from laneway.client import CliError
from laneway.core.images import DEFAULT_IMAGE
from laneway.core.keys import is_routing_key, new_routing_key

__all__ = ["context_app", "k8s_app"]

k8s_app = typer.Typer(help="Kubernetes: render sandboxes against baseline manifests.",
                      no_args_is_help=True)


def _read_sandboxes(file: Path, namespace: str | None) -> list[dict[str, Any]]:
    """The `Sandbox` resources of a file: plain sandbox files or the resources themselves,
    one or several (`---`)."""
    from laneway.core.kubernetes import RenderError
    from laneway.core.kubernetes.convert import sandbox_resource
    from laneway.core.spec import SpecError, load_yaml_documents

    try:
        text = file.read_text()
    except OSError as exc:
        raise CliError(f"{file}: cannot read the file: {exc.strerror}") from exc
    try:
        docs = load_yaml_documents(text, str(file))
    except SpecError as exc:
        raise CliError(exc.render()) from exc
    out = []
    for i, doc in enumerate(docs):
        where = f" (document {i + 1})" if len(docs) > 1 else ""
        try:
            out.append(sandbox_resource(doc, namespace))
        except RenderError as exc:
            raise CliError(f"{file}{where}: {exc}") from exc
    return out


NamespaceOption = Annotated[str | None, typer.Option(
    "--namespace", "-n", help="The sandbox's namespace when the file names none (default: "
    "default)")]


@k8s_app.command("render")
def render(
    file: Annotated[Path, typer.Option("-f", "--file", help="A sandbox file (name, forks with "
                                       "workload, image, env) or a Sandbox resource")],
    baseline: Annotated[Path, typer.Option(help="Folder of the baseline's manifests")],
    routing_key: Annotated[str | None, typer.Option(help="Keep this key (default: a new one)")]
    = None,
    mode: Annotated[str, typer.Option(help="Routing mode: istio (VirtualService routes) or "
                                      "router (the laneway router as a sidecar)")] = "istio",
    image: Annotated[str, typer.Option(help="Router mode: the sidecar's image")]
    = DEFAULT_IMAGE,
    operator_namespace: Annotated[str, typer.Option(
        help="Router mode: where the operator (and its routes feed) runs")] = "laneway-system",
    namespace: NamespaceOption = None,
) -> None:
    """Print, as multi-document YAML, every object the operator would create or patch for a
    sandbox: the forked Deployments and their Services, and either the Istio VirtualServices
    (merged into the team's own) or the baseline Deployments and Services with the router
    sidecar put in front (router mode), for review and GitOps."""
    # The renderer (and pydantic's models under it) only when a command renders: every other
    # `laneway` command starts faster without them.
    from laneway.core.kubernetes import RenderError, load_manifests, render_sandbox
    from laneway.core.kubernetes.router_mode import RouterSidecar

    if mode not in ("istio", "router"):
        raise CliError(f"--mode {mode}: must be istio or router")
    if routing_key is not None and not is_routing_key(routing_key):
        raise CliError("--routing-key: must be 12 characters of a-z and 0-9")
    sandboxes = _read_sandboxes(file, namespace)
    if routing_key is not None and len(sandboxes) > 1:
        raise CliError("--routing-key: the file has several sandboxes, and each has its own key")
    if not baseline.is_dir():
        raise CliError(f"--baseline {baseline}: not a directory")
    try:
        manifests = load_manifests(baseline)
    except RenderError as exc:
        raise CliError(str(exc)) from exc
    for doc in sandboxes:
        key = routing_key or new_routing_key()
        try:
            objects = render_sandbox(doc, manifests, key,
                                     "router" if mode == "router" else "istio",
                                     RouterSidecar(image, operator_namespace))
        except RenderError as exc:
            raise CliError(f"{file}: {exc}") from exc
        header = (f"# laneway k8s render: sandbox {doc['metadata']['name']}, routing key "
                  f"{key}, mode {mode}") + (
            "" if routing_key else " (new: pass --routing-key to keep it)")
        sys.stdout.write(header + "\n" + yaml.safe_dump_all(objects, sort_keys=False,
                                                             explicit_start=True))
        if not routing_key:
            print(f"routing key: {key} (generated) for sandbox {doc['metadata']['name']}",
                  file=sys.stderr)


@k8s_app.command("convert")
def convert(
    file: Annotated[Path, typer.Option("-f", "--file", help="A sandbox file (name, labels, "
                                       "ttl, forks with workload, image, container, env)")],
    namespace: NamespaceOption = None,
) -> None:
    """Print the Sandbox custom resource(s) of a plain sandbox file, for `kubectl apply` or
    GitOps."""
    sys.stdout.write(yaml.safe_dump_all(_read_sandboxes(file, namespace), sort_keys=False,
                                        explicit_start=True))


@k8s_app.command("install")
def install(
    print_: Annotated[bool, typer.Option("--print", help="Print the manifests (for kubectl "
                                         "apply -f - or GitOps)")] = False,
    namespace: Annotated[str, typer.Option(help="Where the operator runs")] = "laneway-system",
    image: Annotated[str, typer.Option(help="An image with `pip install laneway[kubernetes]` "
                                       "(the operator's, and in router mode the sidecars')")]
    = DEFAULT_IMAGE,
    mode: Annotated[str, typer.Option(help="Routing mode: istio or router")] = "istio",
) -> None:
    """The CRDs, least-privilege RBAC and the operator Deployment (and in router mode the
    Service of its routes feed)."""
    from laneway.core.kubernetes.manifests import install_manifests

    if not print_:
        raise CliError("only --print is supported: pipe it to `kubectl apply -f -`")
    if mode not in ("istio", "router"):
        raise CliError(f"--mode {mode}: must be istio or router")
    sys.stdout.write(yaml.safe_dump_all(
        install_manifests(namespace, image, "router" if mode == "router" else "istio"),
        sort_keys=False, explicit_start=True))


context_app = typer.Typer(help="Contexts: the control planes this CLI talks to (a cluster's "
                          "operator, or the local environment).", no_args_is_help=True)


@context_app.command("add")
def context_add(
    name: Annotated[str, typer.Argument(help="The context's name (`laneway --context NAME`)")],
    k8s: Annotated[bool, typer.Option("--k8s", help="A Kubernetes cluster's laneway operator "
                                      "(the only kind so far)")] = False,
    url: Annotated[str | None, typer.Option(help="The operator's API URL; without it, a "
                                            "`kubectl port-forward` to its Service is started "
                                            "for each command")] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Where this context's "
                                           "sandboxes live")] = "default",
    token: Annotated[str | None, typer.Option(help="A bearer token the cluster accepts "
                                              "(stored in the contexts file, mode 0600)")] =
    None,
    token_file: Annotated[str | None, typer.Option(help="...or a file holding one, read at "
                                                   "each use")] = None,
    token_command: Annotated[str | None, typer.Option(help="...or a command printing one, "
                                                      "e.g. 'kubectl create token dev -n "
                                                      "shop'")] = None,
    operator_namespace: Annotated[str, typer.Option(help="The operator's namespace (for the "
                                                    "port-forward)")] = "laneway-system",
    use: Annotated[bool, typer.Option("--use", help="Make it the current context")] = False,
) -> None:
    """Add (or replace) a context, check that it answers, and save it."""
    from laneway.client import ApiClient
    from laneway.client.contexts import Context, ContextError, Contexts, reach

    if not k8s:
        raise CliError("say what the context reaches: --k8s (a cluster's laneway operator)")
    try:
        store = Contexts()
        store.add(Context(name, "k8s", url, namespace, token, token_file, token_command,
                          operator_namespace))
        if use:
            store.current = name
        store.save()
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    console.print(f"context {name} saved in {store.path}: {store.items[name].describe()}",
                  markup=False, highlight=False)
    try:
        reached = reach(name)
        try:
            status = ApiClient(reached.url, reached.token, None, reached.headers,
                               name).get("/v1/status")
        finally:
            reached.close()
    except (CliError, ContextError) as exc:
        console.print(f"[yellow]warning[/yellow]: it does not answer yet: {exc}",
                      highlight=False)
        return
    console.print(f"reached: {status.get('name')}", markup=False, highlight=False)


@context_app.command("list")
def context_list() -> None:
    """The contexts, the current one marked."""
    from laneway.client.contexts import ContextError, Contexts, selected

    try:
        store = Contexts()
        current = selected()
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    rows = table("", "NAME", "KIND", "REACHES")
    rows.add_row("*" if current is None else "", "local", "local",
                 "the environment found from the current folder (.laneway/)")
    for ctx in store.items.values():
        rows.add_row("*" if ctx.name == current else "", ctx.name, ctx.kind, ctx.describe())
    console.print(rows)


@context_app.command("use")
def context_use(name: Annotated[str, typer.Argument(help="A context, or `local`")]) -> None:
    """Make NAME the context of every command (`local`: the environment found here)."""
    from laneway.client.contexts import ContextError, Contexts

    try:
        store = Contexts()
        if name != "local":
            store.get(name)
        store.current = None if name == "local" else name
        store.save()
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    console.print(f"current context: {name}", markup=False)


@context_app.command("remove")
def context_remove(name: str) -> None:
    """Forget a context."""
    from laneway.client.contexts import ContextError, Contexts

    try:
        store = Contexts()
        store.get(name)
        del store.items[name]
        if store.current == name:
            store.current = None
        store.save()
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    console.print(f"context {name} removed", markup=False)
