"""Starting the MCP server: over stdio (the default, for agents that launch it) or streamable
HTTP (`--http`), against the control plane found from the current directory or given."""

from __future__ import annotations

import anyio

from laneway.client import AsyncApiClient, resolve
from laneway.mcp.server import build_server

__all__ = ["main", "serve"]


async def serve(api: str | None, token: str | None, http: bool, host: str, port: int) -> None:
    target = resolve(api, token=token)
    client = AsyncApiClient(target.url, target.token, target.headers, target.context)
    server = build_server(client)
    try:
        if http:
            await server.run_streamable_http_async(host=host, port=port)
        else:
            await server.run_stdio_async()
    finally:
        await client.aclose()


def main(api: str | None = None, token: str | None = None, http: bool = False,
         host: str = "127.0.0.1", port: int = 8765) -> None:
    anyio.run(serve, api, token, http, host, port)
