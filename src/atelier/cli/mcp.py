"""``atelier mcp``: serve the Atelier tools to MCP clients (``docs/mcp.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atelier.cli.context import state
from atelier.sdk._base import DEFAULT_API_URL

__all__ = ["mcp"]


def mcp(
    ctx: typer.Context,
    transport: Annotated[
        str,
        typer.Option(
            "--transport",
            help="stdio (the client spawns this command) or http (streamable HTTP at /mcp).",
        ),
    ] = "stdio",
    host: Annotated[str, typer.Option("--host", help="HTTP: address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="HTTP: port to listen on.")] = 8765,
    url: Annotated[
        str | None, typer.Option("--url", help="Atelier API URL (default: $ATELIER_URL).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", help="Atelier API token (default: $ATELIER_TOKEN).", show_default=False
        ),
    ] = None,
    template: Annotated[
        str, typer.Option("--template", help="Template of the session sandboxes.")
    ] = "base",
    sandbox_timeout: Annotated[
        int,
        typer.Option(
            "--sandbox-timeout",
            help="Seconds a session sandbox lives unused before it is stopped.",
        ),
    ] = 1800,
    audit_log: Annotated[
        Path | None,
        typer.Option("--audit-log", help="Also append the JSON record of every tool call here."),
    ] = None,
) -> None:
    """Run an MCP server whose tools create and use sandboxes (stdio or streamable HTTP)."""
    from atelier.errors import InvalidRequest
    from atelier.mcp import McpConfig, serve

    if transport not in ("stdio", "http"):
        raise InvalidRequest(f"--transport must be stdio or http, not {transport!r}")
    cli = state(ctx)
    resolved_token = token or cli.token
    if resolved_token is None:
        try:
            resolved_token = cli.sdk_options()["token"]
        except Exception:
            resolved_token = None  # HTTP clients may bring their own bearer token
    if resolved_token is None and transport == "stdio":
        cli.sdk_options()  # raises the usual "no API token" error
    config = McpConfig(
        api_url=(url or cli.url or DEFAULT_API_URL).rstrip("/"),
        token=resolved_token,
        template=template,
        sandbox_timeout=sandbox_timeout,
    )
    serve(config, transport="http" if transport == "http" else "stdio", host=host, port=port,
          audit_log=audit_log)  # fmt: skip
