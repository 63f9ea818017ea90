"""The ``atelier`` command (entry point ``atelier.cli.main:app``).

Every :class:`AtelierError` ends the program with one red line on stderr,
``error: <message> (<code>)``, and exit status 2 for requests the user can fix
(4xx) or 1 otherwise — never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from atelier.cli import commands, lifecycle, ports, sandboxes, secrets, snapshots, ssh, workspaces
from atelier.cli.context import CliState
from atelier.cli.mcp import mcp
from atelier.cli.output import console, exit_code_for, print_error
from atelier.cli.prebuilds import app as prebuild_app
from atelier.cli.templates import template_app
from atelier.errors import AtelierError

__all__ = ["app"]


class _Group(TyperGroup):
    """Turns expected errors into the one-line format instead of a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except AtelierError as exc:
            print_error(exc.message, exc.code)
            raise typer.Exit(exit_code_for(exc)) from None
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            where = f": {exc.filename}" if exc.filename else ""
            print_error(f"{exc.strerror or exc}{where}", "local")
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="atelier",
    help="Atelier: isolated workspaces for developers and AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="ATELIER_URL", help="API URL (default: http://127.0.0.1:8080)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="ATELIER_TOKEN",
            help="API token (default: a local server's admin token, if readable).",
        ),
    ] = None,
) -> None:
    cli_state = ctx.ensure_object(CliState)
    if url:
        cli_state.url = url
    if token:
        cli_state.token = token


def server(
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to listen on.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="State directory.")] = None,
) -> None:
    """Run the Atelier server (control plane, API and runner)."""
    from atelier.config import Settings
    from atelier.server.main import serve

    overrides: dict[str, Any] = {"host": host, "port": port, "data_dir": data_dir}
    serve(Settings(**{k: v for k, v in overrides.items() if v is not None}))


def doctor() -> None:
    """Check what this host can run, and why not the rest."""
    from atelier.config import Settings
    from atelier.doctor import render, run_checks

    report = run_checks(Settings())
    render(report, console)
    if not report.ok:
        raise typer.Exit(1)


app.command()(sandboxes.create)
app.command()(workspaces.up)
app.command("ls")(sandboxes.ls)
app.command("exec")(commands.exec_)
app.command()(commands.shell)
app.command()(commands.cp)
app.command()(sandboxes.stop)
app.command()(sandboxes.start)
app.command()(sandboxes.rm)
app.command()(sandboxes.logs)
app.command()(sandboxes.timeout)
app.command()(lifecycle.hibernate)
app.command()(lifecycle.wake)
app.command("auto-stop")(lifecycle.auto_stop)
app.command()(lifecycle.fork)
app.add_typer(snapshots.app, name="snapshot")
app.command("ports")(ports.ports)
app.command("port-forward")(ports.port_forward)
app.command()(server)
app.command()(doctor)
app.command()(mcp)
app.add_typer(template_app, name="template")
app.add_typer(secrets.app, name="secret")
app.add_typer(prebuild_app, name="prebuild")
app.add_typer(ssh.key_app, name="ssh-key")
app.command()(ssh.ssh)
app.command("config-ssh")(ssh.config_ssh)
