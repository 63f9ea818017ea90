"""``atelier secret set|ls|rm``: stored git credentials (values go in, never out)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from atelier.cli.context import state
from atelier.cli.output import console, print_json, print_table
from atelier.sdk import Secrets

__all__ = ["app"]

app = typer.Typer(help="Stored git credentials for workspaces (HTTPS tokens, SSH keys).")

NameArg = Annotated[str, typer.Argument(help="Secret name.", show_default=False)]


def _secrets(ctx: typer.Context) -> Secrets:
    options = state(ctx).sdk_options()
    return Secrets(api_url=options["api_url"], token=options["token"])


@app.command("set")
def set_(
    ctx: typer.Context,
    name: NameArg,
    token_env: Annotated[
        str | None, typer.Option("--token-env", help="Environment variable holding the token.")
    ] = None,
    ssh_key: Annotated[Path | None, typer.Option("--ssh-key", help="SSH private key file.")] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Use it by default for this git host.")
    ] = None,
    username: Annotated[str | None, typer.Option("--username", help="HTTPS user name.")] = None,
    known_hosts: Annotated[
        Path | None, typer.Option("--known-hosts", help="known_hosts file (SSH).")
    ] = None,
) -> None:
    """Store a token (from an environment variable, never a command-line value) or an SSH key."""
    if (token_env is None) == (ssh_key is None):
        raise typer.BadParameter("give exactly one of --token-env or --ssh-key")
    token = None
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise typer.BadParameter(f"${token_env} is not set", param_hint="--token-env")
    try:
        key = ssh_key.read_text() if ssh_key else None
        hosts = known_hosts.read_text() if known_hosts else None
    except OSError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with _secrets(ctx) as secrets:
        info = secrets.put(
            name, token=token, ssh_private_key=key, host=host, username=username, known_hosts=hosts
        )
    console.print(
        f"stored {info.kind} secret {info.name}" + (f" for {info.host}" if info.host else "")
    )


@app.command("ls")
def ls(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List your secrets (names, kinds and hosts; never values)."""
    with _secrets(ctx) as secrets:
        infos = secrets.list()
    if as_json:
        print_json(infos)
        return
    table = Table("NAME", "KIND", "HOST", "USERNAME", "CREATED")
    for info in infos:
        table.add_row(info.name, info.kind, info.host or "", info.username or "", info.created_at)
    print_table(table)


@app.command("rm")
def rm(ctx: typer.Context, name: NameArg) -> None:
    """Delete a secret."""
    with _secrets(ctx) as secrets:
        secrets.delete(name)
