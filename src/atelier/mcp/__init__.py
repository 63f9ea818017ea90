"""``atelier mcp``: an MCP server whose tools drive Atelier sandboxes.

A client of the REST API through the async SDK (never server internals):
``server.py`` (MCPServer, transports), ``tools.py`` (the tools),
``sessions.py`` (a sandbox per MCP session), ``limits.py`` (bounded output),
``results.py`` (error mapping), ``audit.py`` (a record of every call).
See ``docs/mcp.md``.
"""

from atelier.mcp.server import build_server, serve
from atelier.mcp.sessions import McpConfig

__all__ = ["McpConfig", "build_server", "serve"]
