"""Built-in resource plugins: `postgres`, `sqlite`, `redis`, `exec`.

Each turns a sandbox's `resources:` entry into state of its own (a database branch, a file copy,
a Redis namespace, whatever a command makes) and removes it again. The control plane's resource
manager calls them; they never write to the baseline's data.
"""

from __future__ import annotations

from laneway.core.resources import ResourcePlugin
from laneway.plugins.exec import ExecPlugin
from laneway.plugins.postgres import PostgresPlugin
from laneway.plugins.redis import RedisPlugin
from laneway.plugins.sqlite import SqlitePlugin

__all__ = ["builtin_plugins"]


def builtin_plugins() -> dict[str, ResourcePlugin]:
    plugins: list[ResourcePlugin] = [PostgresPlugin(), SqlitePlugin(), RedisPlugin(),
                                     ExecPlugin()]
    return {p.name: p for p in plugins}
