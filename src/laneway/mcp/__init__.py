"""The MCP server: laneway's operations as tools for coding agents (a client of the API)."""
