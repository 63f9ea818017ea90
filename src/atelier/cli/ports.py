"""``atelier ports`` (listening ports, live with ``--watch``) and ``atelier port-forward``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer
from rich.table import Table

from atelier.cli.context import state
from atelier.cli.output import console, print_error, print_json, print_table
from atelier.errors import AtelierError
from atelier.sdk import PortInfo
from atelier.sdk.ports import TunnelServer

__all__ = ["port_forward", "ports"]

SandboxArg = Annotated[str, typer.Argument(help="Sandbox id.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _table(found: list[PortInfo]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("PORT", "ADDRESS", "PID", "COMMAND", "VISIBILITY", "URL"):
        table.add_column(column)
    for p in found:
        table.add_row(
            str(p.port),
            ",".join(p.addresses),
            str(p.pid) if p.pid is not None else "-",
            (p.command or "-")[:60],
            p.visibility,
            p.url,
        )
    return table


def ports(
    ctx: typer.Context,
    sandbox: SandboxArg,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep printing ports as they open and close.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the TCP ports listening inside a sandbox, with their preview URLs."""
    with state(ctx).sandbox(sandbox) as sb:
        found = sb.ports.list()
        if as_json and not watch:
            print_json(found)
            return
        if found:
            print_table(_table(found))
        else:
            console.print("[dim]no listening ports[/dim]")
        if not watch:
            return
        with contextlib.suppress(KeyboardInterrupt), sb.ports.watch() as events:
            for event in events:
                if event.type == "ready":
                    continue
                if as_json:
                    print_json(event)
                else:
                    mark = "[green]+[/green]" if event.type == "opened" else "[red]-[/red]"
                    who = f"  pid {event.pid} {event.command or ''}" if event.pid else ""
                    console.print(f"{mark} {event.port}  {event.address}{who}")


def _parse_mapping(text: str) -> tuple[int, int]:
    local, sep, remote = text.partition(":")
    try:
        lport, rport = (int(local), int(remote)) if sep else (int(text), int(text))
    except ValueError:
        raise typer.BadParameter(f"expected LOCAL:REMOTE (e.g. 8080:3000), got {text!r}") from None
    if not (0 <= lport <= 65535 and 1 <= rport <= 65535):
        raise typer.BadParameter(f"port out of range in {text!r}")
    return lport, rport


def port_forward(
    ctx: typer.Context,
    sandbox: SandboxArg,
    mappings: Annotated[
        list[str],
        typer.Argument(
            help="LOCAL:REMOTE pairs (or PORT for the same number both sides).", show_default=False
        ),
    ],
    address: Annotated[
        str, typer.Option("--address", help="Local address to listen on.")
    ] = "127.0.0.1",
) -> None:
    """Forward local TCP ports to ports inside a sandbox until Ctrl-C.

    Every accepted connection gets its own tunnel through the server and the
    sandbox's agent, so any TCP protocol works, also without sandbox network.
    """
    pairs = [_parse_mapping(m) for m in mappings]
    with state(ctx).sandbox(sandbox) as sb:
        config = sb.ports._config  # the resolved API URL and token
        sandbox_id = sb.id

    def report(exc: BaseException) -> None:
        message = exc.message if isinstance(exc, AtelierError) else str(exc)
        print_error(f"connection failed: {message}")

    async def main() -> None:
        servers = [
            TunnelServer(config, sandbox_id, remote, local, host=address, on_error=report)
            for local, remote in pairs
        ]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            for server in servers:
                await server.start()
                console.print(
                    f"forwarding {address}:{server.local_port} -> {sandbox_id}:{server.remote_port}"
                )
            await stop.wait()
        finally:
            for server in servers:
                await server.aclose()

    try:
        asyncio.run(main())
    except OSError as exc:
        print_error(f"cannot listen: {exc.strerror or exc}")
        raise typer.Exit(1) from exc
