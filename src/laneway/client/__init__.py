"""What every client of the control plane shares (the CLI, the MCP server): finding an
environment and calling its HTTP API. Clients never import the control plane itself."""

from laneway.client.api import (
    ApiClient,
    AsyncApiClient,
    CliError,
    Target,
    connect,
    locate,
    resolve,
)

__all__ = ["ApiClient", "AsyncApiClient", "CliError", "Target", "connect", "locate", "resolve"]
