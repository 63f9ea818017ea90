"""Sandbox lifecycle commands: create, ls, stop, start, rm, logs, timeout."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from atelier.cli.context import state
from atelier.cli.lifecycle import DeleteOpt, HibernateOpt, PauseOpt, auto_stop_options
from atelier.cli.output import (
    console,
    exit_code_for,
    print_error,
    print_json,
    print_table,
    sandbox_table,
)
from atelier.cli.params import parse_pairs, parse_size_mib, parse_timeout
from atelier.errors import AtelierError, SandboxNotFound
from atelier.sdk import Sandbox, SandboxInfo

__all__ = ["create", "logs", "ls", "rm", "start", "stop", "timeout"]

SandboxArg = Annotated[str, typer.Argument(help="Sandbox id.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _done(info: SandboxInfo, as_json: bool) -> None:
    if as_json:
        print_json(info)
    else:
        console.print(f"{escape(info.id)} {escape(info.state)}")


def create(
    ctx: typer.Context,
    template: Annotated[str, typer.Option("--template", "-t", help="Template name.")] = "base",
    vcpus: Annotated[int, typer.Option("--vcpus", min=1, help="Virtual CPUs.")] = 1,
    memory: Annotated[
        str, typer.Option("--memory", "-m", help="Memory: MiB, or 512M / 2G.")
    ] = "512",
    disk: Annotated[str, typer.Option("--disk", help="Disk: MiB, or 2G.")] = "2048",
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="K=V environment (repeatable).")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="K=V label (repeatable).")
    ] = None,
    timeout_: Annotated[
        str, typer.Option("--timeout", help="Stop after this long (300, 5m, 2h, never).")
    ] = "300",
    runtime: Annotated[
        str | None, typer.Option("--runtime", help="Runtime (default: server's).")
    ] = None,
    network: Annotated[
        str | None,
        typer.Option("--network", help="none | egress | open (default: the server's)."),
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="egress: a CIDR or domain it may reach (repeatable)."),
    ] = None,
    deny: Annotated[
        list[str] | None, typer.Option("--deny", help="A CIDR or domain it may not reach.")
    ] = None,
    snapshot: Annotated[
        str | None,
        typer.Option("--snapshot", help="Start from this snapshot (id or name)."),
    ] = None,
    pause_after: PauseOpt = None,
    hibernate_after: HibernateOpt = None,
    delete_after: DeleteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create and start a sandbox; print its id."""
    if (allow or deny) and network is None:
        raise typer.BadParameter("--allow/--deny need --network egress or open")
    sb = Sandbox.create(
        template=template,
        vcpus=vcpus,
        memory_mib=parse_size_mib(memory, "--memory"),
        disk_mib=parse_size_mib(disk, "--disk"),
        env=parse_pairs(env, "--env"),
        labels=parse_pairs(label, "--label"),
        timeout=parse_timeout(timeout_, "--timeout"),
        runtime=runtime,
        network=({"mode": network, "allow": allow or [], "deny": deny or []} if network else None),
        snapshot=snapshot,
        auto_stop=auto_stop_options(pause_after, hibernate_after, delete_after),
        **state(ctx).sdk_options(),
    )
    sb.close()
    if as_json:
        print_json(sb.info)
    else:
        sys.stdout.write(sb.id + "\n")


def ls(
    ctx: typer.Context,
    state_: Annotated[
        str | None, typer.Option("--state", help="Only sandboxes in this state.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="K=V label filter (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List sandboxes."""
    found = Sandbox.list(
        state=state_, labels=parse_pairs(label, "--label"), **state(ctx).sdk_options()
    )
    if as_json:
        print_json(found)
    elif not found:
        console.print("[dim]no sandboxes[/dim]")
    else:
        print_table(sandbox_table(found))


def stop(ctx: typer.Context, sandbox: SandboxArg, as_json: JsonOpt = False) -> None:
    """Stop a sandbox (its disk is kept)."""
    with state(ctx).sandbox(sandbox) as sb:
        _done(sb.stop(), as_json)


def start(ctx: typer.Context, sandbox: SandboxArg, as_json: JsonOpt = False) -> None:
    """Start a stopped sandbox."""
    with state(ctx).sandbox(sandbox) as sb:
        _done(sb.start(), as_json)


def rm(
    ctx: typer.Context,
    sandboxes: Annotated[list[str], typer.Argument(help="Sandbox ids.", show_default=False)],
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Ignore sandboxes that do not exist.")
    ] = False,
) -> None:
    """Delete sandboxes (every one given is tried; failures are reported)."""
    worst = 0
    for sandbox_id in sandboxes:
        try:
            with state(ctx).sandbox(sandbox_id) as sb:
                sb.kill()
            sys.stdout.write(sandbox_id + "\n")
        except SandboxNotFound as exc:
            if not force:
                print_error(exc.message, exc.code)
                worst = max(worst, exit_code_for(exc))
        except AtelierError as exc:
            print_error(exc.message, exc.code)
            worst = max(worst, exit_code_for(exc))
    if worst:
        raise typer.Exit(worst)


def logs(
    ctx: typer.Context,
    sandbox: SandboxArg,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=1, help="Only the last N lines.")
    ] = None,
) -> None:
    """Print a sandbox's runtime and agent log."""
    with state(ctx).sandbox(sandbox) as sb:
        text = sb.logs(tail=tail)
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")


def timeout(
    ctx: typer.Context,
    sandbox: SandboxArg,
    seconds: Annotated[
        str, typer.Argument(help="From now: 600, 10m, 2h or 'never'.", show_default=False)
    ],
    as_json: JsonOpt = False,
) -> None:
    """Set when a sandbox is stopped automatically."""
    value = parse_timeout(seconds, "SECONDS")
    with state(ctx).sandbox(sandbox) as sb:
        info = sb.set_timeout(value)
    if as_json:
        print_json(info)
    elif info.expires_at is None:
        console.print(f"{escape(info.id)} never expires")
    else:
        console.print(f"{escape(info.id)} expires at {info.expires_at.isoformat()}")
