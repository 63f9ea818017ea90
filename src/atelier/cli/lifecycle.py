"""``atelier hibernate|wake|auto-stop|fork``: hibernation, the idle policy and
forks (see docs/lifecycle.md)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from atelier.cli.context import state
from atelier.cli.output import console, print_json
from atelier.cli.params import parse_duration
from atelier.sdk import AutoStop, SandboxInfo

__all__ = ["auto_stop", "auto_stop_options", "fork", "hibernate", "wake"]

SandboxArg = Annotated[str, typer.Argument(help="Sandbox id.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
PauseOpt = Annotated[
    str | None, typer.Option("--pause-after", help="Pause after this long idle (10m, 1h...).")
]
HibernateOpt = Annotated[
    str | None, typer.Option("--hibernate-after", help="Hibernate after this long idle.")
]
DeleteOpt = Annotated[
    str | None, typer.Option("--delete-after", help="Delete after this long idle (e.g. 7d).")
]


def auto_stop_options(
    pause_after: str | None, hibernate_after: str | None, delete_after: str | None
) -> AutoStop | None:
    """The policy the three options describe (``None`` if none was given)."""
    if pause_after is None and hibernate_after is None and delete_after is None:
        return None
    return AutoStop(
        pause_after=parse_duration(pause_after, "--pause-after"),
        hibernate_after=parse_duration(hibernate_after, "--hibernate-after"),
        delete_after=parse_duration(delete_after, "--delete-after"),
    )


def _done(info: SandboxInfo, as_json: bool) -> None:
    if as_json:
        print_json(info)
    else:
        console.print(f"{escape(info.id)} {escape(info.state)}")


def hibernate(ctx: typer.Context, sandbox: SandboxArg, as_json: JsonOpt = False) -> None:
    """Save a sandbox's memory to disk and free its RAM (it wakes on next use)."""
    with state(ctx).sandbox(sandbox) as sb:
        _done(sb.hibernate(), as_json)


def wake(ctx: typer.Context, sandbox: SandboxArg, as_json: JsonOpt = False) -> None:
    """Wake a hibernated (or resume a paused) sandbox."""
    with state(ctx).sandbox(sandbox) as sb:
        _done(sb.wake(), as_json)


def auto_stop(
    ctx: typer.Context,
    sandbox: SandboxArg,
    pause_after: PauseOpt = None,
    hibernate_after: HibernateOpt = None,
    delete_after: DeleteOpt = None,
    off: Annotated[bool, typer.Option("--off", help="Never stop it by itself.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Set a sandbox's idle policy (show it when no option is given)."""
    policy = auto_stop_options(pause_after, hibernate_after, delete_after)
    if off and policy is not None:
        raise typer.BadParameter("--off cannot be combined with --*-after")
    with state(ctx).sandbox(sandbox) as sb:
        info = sb.set_auto_stop(policy) if off or policy is not None else sb.get_info()
    if as_json:
        print_json(info)
        return
    current = info.auto_stop
    if current is None:
        console.print(f"{escape(info.id)}: no idle policy")
        return
    steps = [
        f"{verb} after {_span(value)}"
        for verb, value in (
            ("pause", current.pause_after),
            ("hibernate", current.hibernate_after),
            ("delete", current.delete_after),
        )
        if value is not None
    ]
    console.print(f"{escape(info.id)}: " + ", ".join(steps) + " idle")


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def fork(
    ctx: typer.Context,
    sandbox: SandboxArg,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many copies.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Copy a running sandbox (files and processes) into N new ones; print their ids."""
    with state(ctx).sandbox(sandbox) as sb:
        forks = sb.fork(count)
    for copy in forks:
        copy.close()
    if as_json:
        print_json([copy.info for copy in forks])
    else:
        sys.stdout.write("".join(copy.id + "\n" for copy in forks))
