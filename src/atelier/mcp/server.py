"""``atelier mcp``: the MCP server, over stdio or streamable HTTP.

It is a client of the Atelier REST API through the async SDK, with the user's
token; it never imports server internals (``docs/adr/0014``).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
from mcp.server.mcpserver import MCPServer

from atelier import __version__
from atelier.mcp.audit import AuditLog
from atelier.mcp.limits import STREAM_LIMIT
from atelier.mcp.sessions import McpConfig, Sessions
from atelier.mcp.tools import Toolbox, register_tools

__all__ = ["INSTRUCTIONS", "build_server", "serve"]

Transport = Literal["stdio", "http"]

INSTRUCTIONS = """\
Atelier gives you isolated Linux sandboxes (gVisor). Use run_command, run_code, \
read_file, write_file and list_files; they act in this session's sandbox, created on \
first use (Debian, user `user`, home /home/user) and deleted when the session ends. \
Pass sandbox_id to act in another sandbox (create_sandbox, list_sandboxes). Output \
is truncated to 64 KiB per stream; long-running commands are killed at their timeout."""


def build_server(
    config: McpConfig,
    audit_log: Path | None = None,
    stream_limit: int = STREAM_LIMIT,
    after_cleanup: Callable[[], None] | None = None,
) -> MCPServer[Any]:
    """The MCP server; ``after_cleanup`` runs once every session's sandboxes are deleted."""
    sessions = Sessions(config)

    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        try:
            yield None
        finally:  # sessions the transport did not end (server shutdown)
            with anyio.CancelScope(shield=True):
                await sessions.close_all()
            if after_cleanup is not None:
                after_cleanup()

    server: MCPServer[Any] = MCPServer(
        "atelier",
        title="Atelier sandboxes",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
    )
    register_tools(server, Toolbox(sessions, AuditLog(audit_log), stream_limit))
    return server


async def _stdio_until_signalled(server: MCPServer[Any], signalled: list[bool]) -> None:
    """Serve stdio until stdin closes or SIGTERM/SIGHUP arrives; either way the
    sessions' sandboxes are deleted on the way out (the lifespan's cleanup)."""
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                async for _ in signals:
                    signalled.append(True)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await server.run_stdio_async()
        tg.cancel_scope.cancel()


def serve(
    config: McpConfig,
    transport: Transport = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    audit_log: Path | None = None,
) -> None:
    """Run until stdin closes (stdio) or the process is interrupted (http)."""
    signalled: list[bool] = []

    def exit_if_signalled() -> None:
        # The stdin reader is a thread blocked in read(): it cannot be cancelled, so
        # after a signal, once the sandboxes are deleted, leave without waiting for it.
        if signalled:
            os._exit(0)

    server = build_server(config, audit_log, after_cleanup=exit_if_signalled)
    logging.getLogger("atelier.mcp").setLevel(logging.INFO)
    if transport == "stdio":
        anyio.run(_stdio_until_signalled, server, signalled)
        return
    # On a loopback address the SDK turns on DNS-rebinding protection (Host/Origin checks).
    server.run("streamable-http", host=host, port=port)
