"""Preview URLs: `http://<sandbox>--<service>.localhost:<port>/`, a browser's way into a sandbox.

The preview edge (a listener of the data plane, `router/edge.py`) reads the host a request was
sent to, finds the sandbox (or route group) and the service in it, puts the sandbox's key into
the request's `baggage` and forwards it to that service's router. Browsers resolve every
`*.localhost` name to loopback themselves (RFC 6761 §6.3), so nothing needs DNS or `/etc/hosts`,
and because the key is in the host, every same-origin request of the page (its `fetch()` calls,
images, scripts, forms) carries it without a cookie.

This module is the pure part: reading a host, naming a preview URL, the pages the edge answers
with when a host names nothing that exists.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping
from dataclasses import dataclass

__all__ = [
    "PREVIEW_SEPARATOR",
    "Preview",
    "PreviewMiss",
    "host_name",
    "index_page",
    "key_of_origin",
    "miss_page",
    "preview_host",
    "preview_url",
    "resolve",
]

PREVIEW_SEPARATOR = "--"


def preview_host(name: str, service: str, port: int) -> str:
    return f"{name}{PREVIEW_SEPARATOR}{service}.localhost:{port}"


def preview_url(name: str, service: str, port: int) -> str:
    """The URL a browser opens to see `service` as sandbox (or route group) `name` sees it."""
    return f"http://{preview_host(name, service, port)}/"


@dataclass(frozen=True, slots=True)
class Preview:
    """What a host names: a service, and the sandbox or route group whose key it gets (none:
    the baseline, asked for explicitly as `<service>.localhost`)."""

    service: str
    name: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class PreviewMiss:
    """A host that names nothing there is: answered with a page that says so (never the
    baseline, which would show a deleted sandbox's preview as if it were the change)."""

    status: int
    code: str
    title: str
    message: str


def host_name(host: str) -> str:
    """The name part of a `Host` value, lowercased (browsers send names lowercased; a client
    that does not still means the same host): `sb--web.localhost:7780` -> `sb--web.localhost`."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal: [::1]:7780
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def resolve(host: str, names: Mapping[str, str],
            services: Collection[str]) -> Preview | PreviewMiss | None:
    """What the edge does with a request sent to `host`.

    `names` maps sandbox and route group names to their keys, `services` are the baseline's
    services. Only the first label of the name matters, so a wildcard DNS name of the team's
    (`sb--web.preview.example.test`) works as `sb--web.localhost` does. Returns None for a host
    that names no preview at all (`localhost`, an IP address): the edge's index page.
    """
    name = host_name(host)
    if not name or name.startswith("[") or name.replace(".", "").isdigit():
        return None
    label = name.split(".", 1)[0]
    if "." not in name and label == "localhost":
        return None
    if PREVIEW_SEPARATOR not in label:
        if label in services:
            return Preview(label)
        if label == "localhost":
            return None
        return PreviewMiss(404, "unknown_service", "No such service",
                           f"{label!r} is not a service of this baseline; a preview host is "
                           f"<sandbox>--<service>.localhost (services: {_listed(services)})")
    # Names may hold `--` themselves: every split is tried, so `a--b--web` is sandbox `a--b`
    # at service `web` when that is what exists.
    start = 0
    unknown_name = ""
    while (cut := label.find(PREVIEW_SEPARATOR, start)) != -1:
        sandbox, service = label[:cut], label[cut + len(PREVIEW_SEPARATOR):]
        start = cut + 1
        if service in services:
            key = names.get(sandbox)
            if key is not None:
                return Preview(service, sandbox, key)
            unknown_name = unknown_name or sandbox
    if unknown_name:
        return PreviewMiss(404, "unknown_sandbox", "No such sandbox",
                           f"there is no sandbox or route group named {unknown_name!r}: it "
                           "was deleted, it expired, or it was never created. "
                           "'laneway sandbox list' shows the ones there are; this page "
                           "never falls back to the baseline")
    sandbox, _, service = label.partition(PREVIEW_SEPARATOR)
    return PreviewMiss(404, "unknown_service", "No such service",
                       f"{service!r} is not a service of this baseline "
                       f"(services: {_listed(services)})")


def key_of_origin(origin: str, names: Mapping[str, str], port: int) -> str | None:
    """The key of a request a preview page sent to another service's own address (its public
    port, not its preview host): the browser's `Origin` is the page's preview host, so the
    request is the sandbox's. Only an origin on the edge's own port counts."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if scheme != "http" or not sep:
        return None
    name, colon, given = rest.rpartition(":")
    if not colon or given != str(port):
        return None
    label = name.split(".", 1)[0]
    start = 0
    while (cut := label.find(PREVIEW_SEPARATOR, start)) != -1:
        key = names.get(label[:cut])
        if key is not None:
            return key
        start = cut + 1
    return None


def _listed(services: Collection[str]) -> str:
    return ", ".join(sorted(services)) or "none yet"


def miss_page(miss: PreviewMiss, links: list[tuple[str, str]]) -> bytes:
    """The HTML page for a host that names nothing: what happened and where to go instead."""
    items = "".join(f'<li><a href="{html.escape(url)}">{html.escape(text)}</a></li>'
                    for text, url in links)
    more = f"<h2>Previews there are</h2><ul>{items}</ul>" if items else \
        "<p>No sandbox has a preview yet: <code>laneway sandbox apply -f FILE</code>.</p>"
    return _page(miss.title, f"<p>{html.escape(miss.message)}.</p>{more}")


def index_page(links: list[tuple[str, str]], baseline: list[tuple[str, str]]) -> bytes:
    """The edge's own page (a host that names no preview): every preview URL there is."""
    items = "".join(f'<li><a href="{html.escape(url)}">{html.escape(text)}</a></li>'
                    for text, url in links) or "<li>none yet: apply a sandbox</li>"
    base = "".join(f'<li><a href="{html.escape(url)}">{html.escape(text)}</a></li>'
                   for text, url in baseline)
    return _page("laneway previews",
                 "<p>Open a sandbox's service at <code>http://&lt;sandbox&gt;--&lt;service&gt;"
                 ".localhost:PORT/</code>; the edge adds the sandbox's routing key to every "
                 f"request.</p><h2>Sandboxes and route groups</h2><ul>{items}</ul>"
                 f"<h2>The baseline</h2><ul>{base}</ul>")


def _page(title: str, body: str) -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<title>{html.escape(title)}</title><link rel="icon" href="data:,">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:3rem auto;"
        "padding:0 1rem;color:#1b1f24}code{background:#f0f2f4;padding:0 .25em}"
        "h1{font-size:1.5rem}</style></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{body}"
        "<p><small>laneway preview edge</small></p></main></body></html>\n"
    ).encode()
