"""``atelier ssh-key add|ls|rm``, ``atelier ssh SB``, ``atelier config-ssh``: the SSH gateway.

``atelier ssh`` runs the system ``ssh`` with the gateway's port, the sandbox id
as user name and a known_hosts file holding the gateway's host keys (fetched
through the API, so the first connection is verified too). ``config-ssh``
writes one ``Host atelier-<sandbox-id>`` entry per sandbox into a marked block
of ``~/.ssh/config``, which VS Code Remote-SSH and JetBrains Gateway list.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.table import Table

from atelier.cli.context import state
from atelier.cli.output import console, print_json, print_table
from atelier.errors import InvalidRequest, ServiceUnavailable
from atelier.sdk import Sandbox, SSHGatewayInfo, SSHKeys

__all__ = ["config_ssh", "key_app", "known_hosts_lines", "render_block", "ssh", "update_block"]

key_app = typer.Typer(help="Public keys for the SSH gateway (ssh sb-...@host -p 2222).")

BEGIN = "# --- BEGIN atelier: managed by `atelier config-ssh`, edits here are lost ---"
END = "# --- END atelier ---"
DEFAULT_CONFIG = Path("~/.ssh/config")
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/atelier_known_hosts")
HOST_PREFIX = "atelier-"

NameArg = Annotated[str, typer.Argument(help="Key name, e.g. laptop.", show_default=False)]


def _keys(ctx: typer.Context) -> SSHKeys:
    return SSHKeys(**state(ctx).sdk_options())


# -- ssh-key ---------------------------------------------------------------------------------
@key_app.command("add")
def key_add(
    ctx: typer.Context,
    name: NameArg,
    file: Annotated[Path, typer.Argument(help="Public key file.", show_default=True)] = Path(
        "~/.ssh/id_ed25519.pub"
    ),
) -> None:
    """Register a public key (the .pub file) for your token."""
    path = file.expanduser()
    if path.suffix != ".pub" and path.with_name(path.name + ".pub").exists():
        path = path.with_name(path.name + ".pub")  # given the private key: use its .pub
    text = path.read_text()
    with _keys(ctx) as keys:
        info = keys.add(name, text)
    console.print(f"added SSH key {info.name} ({info.fingerprint})")


@key_app.command("ls")
def key_ls(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List your registered public keys."""
    with _keys(ctx) as keys:
        infos = keys.list()
    if as_json:
        print_json(infos)
        return
    table = Table("NAME", "FINGERPRINT", "TYPE", "CREATED")
    for info in infos:
        table.add_row(info.name, info.fingerprint, info.public_key.split()[0], info.created_at)
    print_table(table)


@key_app.command("rm")
def key_rm(ctx: typer.Context, name: NameArg) -> None:
    """Remove a registered public key."""
    with _keys(ctx) as keys:
        keys.delete(name)


# -- helpers ----------------------------------------------------------------------------------
def _gateway(keys: SSHKeys) -> tuple[SSHGatewayInfo, str, int]:
    info = keys.gateway()
    if not info.enabled or info.port is None:
        raise ServiceUnavailable(
            "the server runs without the SSH gateway: start it with ATELIER_SSH_PORT=2222"
        )
    host = info.host or urlsplit(keys.api_url).hostname or "127.0.0.1"
    return info, host, info.port


def _host_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_lines(existing: str, host: str, port: int, host_keys: list[str]) -> str:
    """``existing`` with the entries of ``host``:``port`` replaced by ``host_keys``."""
    pattern = _host_pattern(host, port)
    kept = [line for line in existing.splitlines() if line.split(" ", 1)[0] != pattern]
    kept += [f"{pattern} {key}" for key in host_keys]
    return "\n".join(kept) + "\n"


def _write_known_hosts(path: Path, host: str, port: int, host_keys: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = path.read_text() if path.exists() else ""
    updated = known_hosts_lines(existing, host, port, host_keys)
    if updated != existing:
        path.write_text(updated)


def _config_path(path: Path) -> str:
    """An absolute path as ssh_config takes it (ssh expands ``~`` from the passwd
    entry, not ``$HOME``, so none is written), quoted if it has spaces."""
    text = str(path.expanduser().resolve())
    return f'"{text}"' if " " in text else text


# -- atelier ssh ------------------------------------------------------------------------------
def ssh(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(help="Sandbox id.", show_default=False)],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="Command to run (after --); default: a login shell."),
    ] = None,
    forward: Annotated[
        list[str] | None,
        typer.Option("-L", "--forward", help="Local forward, as ssh -L (repeatable)."),
    ] = None,
    identity: Annotated[
        Path | None, typer.Option("-i", "--identity", help="Private key file.")
    ] = None,
    known_hosts: Annotated[
        Path, typer.Option("--known-hosts", help="Where the gateway's host keys are kept.")
    ] = DEFAULT_KNOWN_HOSTS,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the ssh command instead of running it.")
    ] = False,
) -> None:
    """Open an SSH session to a sandbox through the server's SSH gateway."""
    with _keys(ctx) as keys:
        info, host, port = _gateway(keys)
    kh = known_hosts.expanduser().resolve()
    argv = ["ssh", "-p", str(port), "-o", f"UserKnownHostsFile={kh}"]
    argv += ["-o", "StrictHostKeyChecking=yes"]
    if identity is not None:
        argv += ["-i", str(identity.expanduser().resolve()), "-o", "IdentitiesOnly=yes"]
    for spec in forward or []:
        argv += ["-L", spec]
    argv.append(f"{sandbox_id}@{host}")
    argv += command or []
    if print_only:
        console.print(" ".join(argv), highlight=False, soft_wrap=True)
        return
    _write_known_hosts(kh, host, port, info.host_keys)
    if shutil.which("ssh") is None:
        raise InvalidRequest("the ssh client is not installed (apt-get install openssh-client)")
    os.execvp("ssh", argv)


# -- atelier config-ssh -----------------------------------------------------------------------
def render_block(
    sandbox_ids: list[str], host: str, port: int, known_hosts: Path, identity: Path | None
) -> str:
    lines = [BEGIN]
    for sandbox_id in sorted(sandbox_ids):
        lines += [
            f"Host {HOST_PREFIX}{sandbox_id}",
            f"  HostName {host}",
            f"  Port {port}",
            f"  User {sandbox_id}",
            f"  UserKnownHostsFile {_config_path(known_hosts)}",
            "  StrictHostKeyChecking yes",
        ]
        if identity is not None:
            lines += [f"  IdentityFile {_config_path(identity)}", "  IdentitiesOnly yes"]
    lines += ["Match all", END]  # back to global scope for whatever follows
    return "\n".join(lines) + "\n"


def update_block(existing: str, block: str | None) -> str:
    """``existing`` with the managed block replaced (``None``: removed); a new one goes
    first, so its entries win over later ``Host *`` settings."""
    lines = existing.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == BEGIN)
        end = next(i for i in range(start, len(lines)) if lines[i].rstrip("\n") == END)
    except StopIteration:
        if block is None:
            return existing
        return block + ("\n" + existing if existing else "")
    before, after = "".join(lines[:start]), "".join(lines[end + 1 :])
    if block is None:
        if after.startswith("\n"):
            after = after[1:]
        return before + after
    return before + block + after


def config_ssh(
    ctx: typer.Context,
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove the block Atelier wrote.")
    ] = False,
    config: Annotated[Path, typer.Option("--ssh-config", help="The ssh config file.")] = (
        DEFAULT_CONFIG
    ),
    known_hosts: Annotated[
        Path, typer.Option("--known-hosts", help="Where the gateway's host keys are kept.")
    ] = DEFAULT_KNOWN_HOSTS,
    identity: Annotated[
        Path | None, typer.Option("-i", "--identity", help="IdentityFile for the entries.")
    ] = None,
) -> None:
    """Write `Host atelier-<sandbox-id>` entries for your sandboxes into ~/.ssh/config
    (for ssh, scp, VS Code Remote-SSH, JetBrains Gateway); run again to refresh."""
    path = config.expanduser()
    existing = path.read_text() if path.exists() else ""
    if remove:
        updated = update_block(existing, None)
        if updated != existing:
            path.write_text(updated)
        console.print(f"removed the Atelier entries from {path}")
        return
    options = state(ctx).sdk_options()
    with SSHKeys(**options) as keys:
        info, host, port = _gateway(keys)
    sandboxes = [sb.id for sb in Sandbox.list(**options) if sb.state != "deleted"]
    kh = known_hosts.expanduser()
    _write_known_hosts(kh, host, port, info.host_keys)
    ident = identity.expanduser() if identity is not None else None
    updated = update_block(existing, render_block(sandboxes, host, port, kh, ident))
    if updated != existing:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(updated)
        if not existing:
            path.chmod(0o600)
    console.print(
        f"{len(sandboxes)} sandbox(es) in {path}: ssh {HOST_PREFIX}<sandbox-id>", highlight=False
    )
