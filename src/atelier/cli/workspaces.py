"""``atelier up``: a workspace from a git repository."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from atelier.cli.context import state
from atelier.cli.output import err_console, print_json, print_warning
from atelier.cli.params import parse_pairs, parse_size_mib, parse_timeout
from atelier.errors import WorkspaceSetupFailed
from atelier.sdk import GitAuth, Sandbox

__all__ = ["up"]


def _local_env(values: list[str] | None) -> dict[str, str]:
    """``--local-env NAME`` forwards this shell's value; ``NAME=VALUE`` sets one."""
    env: dict[str, str] = {}
    for value in values or []:
        if "=" in value:
            env.update(parse_pairs([value], "--local-env"))
        elif value in os.environ:
            env[value] = os.environ[value]
    return env


def _auth(token_env: str | None, ssh_key: Path | None, known_hosts: Path | None) -> GitAuth | None:
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise typer.BadParameter(f"${token_env} is not set", param_hint="--token-env")
    try:
        key = ssh_key.read_text() if ssh_key else None
        hosts = known_hosts.read_text() if known_hosts else None
    except OSError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ssh-key/--known-hosts") from exc
    if token is None and key is None:
        return None
    return GitAuth(token=token, ssh_private_key=key, ssh_known_hosts=hosts)


def up(
    ctx: typer.Context,
    repo: Annotated[str, typer.Argument(help="Git URL: https://..., git@host:org/repo.git, ...")],
    ref: Annotated[str | None, typer.Option("--ref", help="Branch, tag or commit.")] = None,
    devcontainer: Annotated[
        str | None,
        typer.Option("--devcontainer", help="Which devcontainer.json, if the repo has several."),
    ] = None,
    token_env: Annotated[
        str | None,
        typer.Option("--token-env", help="Environment variable holding an HTTPS token."),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option("--secret", help="A stored secret (default: yours for the repo's host)."),
    ] = None,
    ssh_key: Annotated[
        Path | None, typer.Option("--ssh-key", help="SSH private key file for the clone.")
    ] = None,
    known_hosts: Annotated[
        Path | None, typer.Option("--known-hosts", help="known_hosts file pinning the git host.")
    ] = None,
    full_history: Annotated[
        bool, typer.Option("--full-history", help="Clone every commit (default: shallow).")
    ] = False,
    local_env: Annotated[
        list[str] | None,
        typer.Option("--local-env", help="NAME or NAME=VALUE for ${localEnv:NAME} (repeatable)."),
    ] = None,
    vcpus: Annotated[int, typer.Option("--vcpus", min=1, help="Virtual CPUs (at least).")] = 1,
    memory: Annotated[str, typer.Option("--memory", "-m", help="Memory (at least).")] = "1024",
    disk: Annotated[str, typer.Option("--disk", help="Disk (at least).")] = "4096",
    timeout_: Annotated[
        str, typer.Option("--timeout", help="Stop after this long (default: never).")
    ] = "never",
    no_prebuild: Annotated[
        bool, typer.Option("--no-prebuild", help="Set up from scratch even if prebuilt.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Create a workspace from a git repository and its devcontainer.json; print its id."""
    auth = _auth(token_env, ssh_key, known_hosts)
    try:
        with err_console.status(f"setting up {escape(repo)} ...", spinner="dots"):
            sb = Sandbox.create(
                repo=repo,
                ref=ref,
                devcontainer=devcontainer,
                git_auth=auth,
                git_secret=secret,
                depth=None if full_history else 1,
                local_env=_local_env(local_env),
                vcpus=vcpus,
                memory_mib=parse_size_mib(memory, "--memory"),
                disk_mib=parse_size_mib(disk, "--disk"),
                timeout=parse_timeout(timeout_, "--timeout"),
                prebuild=not no_prebuild,
                **state(ctx).sdk_options(),
            )
    except WorkspaceSetupFailed as exc:
        sandbox_id = exc.details.get("sandbox_id")
        if sandbox_id:
            exc.message += f" (sandbox {sandbox_id} kept: atelier logs {sandbox_id})"
        raise
    sb.close()
    info = sb.info
    if as_json:
        print_json(info)
        return
    workspace = info.workspace
    for warning in workspace.warnings if workspace else []:
        print_warning(warning)
    sys.stdout.write(info.id + "\n")
    if workspace is not None:
        err_console.print(
            f"[dim]{escape(workspace.repo)} @ {escape((workspace.commit or '')[:12])} in "
            f"{escape(workspace.folder)} ({escape(workspace.status)}); "
            f"atelier shell {escape(info.id)}[/dim]",
            highlight=False,
        )
