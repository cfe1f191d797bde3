"""`redis`: a per-sandbox namespace on the baseline's Redis server.

Two modes, with different trade-offs:
- `prefix` (default): the sandbox uses the baseline's database with its own key prefix
  (output `prefix`, e.g. `lw:sb-a:cache:`). Works with any server, Redis Cluster included, and
  any number of sandboxes, but the application must put the prefix on its keys
  (`laneway.propagation.cache_key` does). Delete removes exactly the keys under the prefix.
- `db`: the sandbox gets a database number of its own (output `url` points at it), so the
  application needs no change; but a server has few databases (16 by default), Cluster has
  only one, and a database is claimed only while it is empty. Delete flushes that database.

In both modes, delete also removes the consumer groups the sandbox's forks made on the
baseline's streams (`GROUP@KEY`, see `laneway.propagation.streams`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from laneway.core.resources import PluginError, ResourceContext

__all__ = ["RedisPlugin"]

OWNER_KEY = "laneway:owner"


class RedisParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="the baseline's Redis (redis://, rediss:// or unix://)")
    mode: Literal["prefix", "db"] = "prefix"
    databases: int = Field(default=16, ge=2, le=1024, description="db mode: how many exist")


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("db="))
        # urlunsplit would drop the empty authority (unix:///path -> unix:/path).
        return f"unix://{parts.path}?" + f"{query}&db={db}".lstrip("&")
    return urlunsplit(parts._replace(path=f"/{db}"))


class RedisPlugin:
    name = "redis"
    params_model = RedisParams

    async def _destroy_fork_groups(self, url: str, routing_key: str) -> None:
        """The consumer groups the sandbox's forks read the baseline's streams with
        (`GROUP@KEY`, made by `laneway.propagation.StreamConsumer`). Resources are deleted after
        the forks stop, and the key is the sandbox's alone, so no live reader loses its group.
        """
        suffix = f"@{routing_key}".encode()
        client = await self._client(url)
        try:
            async for stream in client.scan_iter(count=1000, _type="stream"):
                groups: Any = await client.xinfo_groups(stream)
                for group in groups:
                    name = group["name"] if isinstance(group["name"], bytes) else \
                        str(group["name"]).encode()
                    if name.endswith(suffix):
                        await client.xgroup_destroy(stream, name)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _client(self, url: str) -> aioredis.Redis:
        client: aioredis.Redis = aioredis.Redis.from_url(url, socket_connect_timeout=5)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise PluginError(f"redis: cannot reach {url}: {exc}") from exc
        return client

    async def create(self, ctx: ResourceContext, params: Any) -> tuple[dict[str, str],
                                                                          dict[str, Any]]:
        if params.mode == "prefix":
            client = await self._client(params.url)
            await client.aclose()
            prefix = f"lw:{ctx.sandbox}:{ctx.resource}:"
            return {"url": params.url, "prefix": prefix}, {"prefix": prefix}
        owner = f"{ctx.sandbox}/{ctx.resource}"
        for db in range(1, params.databases):
            client = await self._client(_with_db(params.url, db))
            try:
                if await client.get(OWNER_KEY) == owner.encode():
                    return {"url": _with_db(params.url, db), "prefix": ""}, {"db": db}
                if await client.dbsize() == 0 and await client.set(OWNER_KEY, owner, nx=True):
                    return {"url": _with_db(params.url, db), "prefix": ""}, {"db": db}
            finally:
                await client.aclose()
        raise PluginError(f"redis: no empty database left among 1..{params.databases - 1} on "
                          f"{params.url}; use mode: prefix, or delete other sandboxes")

    async def delete(self, ctx: ResourceContext, params: Any, state: dict[str, Any]) -> None:
        await self._destroy_fork_groups(params.url, ctx.routing_key)
        if "db" in state:
            client = await self._client(_with_db(params.url, int(state["db"])))
            try:
                if await client.get(OWNER_KEY) == f"{ctx.sandbox}/{ctx.resource}".encode():
                    await client.flushdb()
            finally:
                await client.aclose()
            return
        prefix = state.get("prefix")
        if not prefix or not prefix.startswith("lw:"):
            return  # only ever delete under a prefix of ours
        client = await self._client(params.url)
        try:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    await client.unlink(*batch)
                    batch = []
            if batch:
                await client.unlink(*batch)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
