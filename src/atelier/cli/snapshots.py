"""``atelier snapshot create|ls|rm``: saved sandboxes (see docs/lifecycle.md)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from atelier.cli.context import state
from atelier.cli.output import console, print_json, print_table
from atelier.cli.params import parse_pairs
from atelier.sdk import SnapshotInfo, Snapshots

__all__ = ["app", "human_size"]

app = typer.Typer(help="Snapshots: saved sandboxes to start new ones from.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def human_size(size: int) -> str:
    """``1536`` → ``1.5K``; powers of 1024."""
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _snapshots(ctx: typer.Context) -> Snapshots:
    return Snapshots(**state(ctx).sdk_options())


@app.command("create")
def create(
    ctx: typer.Context,
    sandbox: Annotated[str, typer.Argument(help="Sandbox id.", show_default=False)],
    name: Annotated[str | None, typer.Option("--name", "-n", help="A name (unique).")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="K=V label (repeatable).")
    ] = None,
    memory: Annotated[
        bool | None,
        typer.Option(
            "--memory/--no-memory",
            help="Save running processes too (default: if the runtime can).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Save a sandbox's files (and memory); it keeps running. Print the snapshot id."""
    with state(ctx).sandbox(sandbox) as sb:
        info = sb.snapshot(name, labels=parse_pairs(label, "--label"), memory=memory)
    if as_json:
        print_json(info)
    else:
        sys.stdout.write(info.id + "\n")


@app.command("ls")
def ls(
    ctx: typer.Context,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="K=V label filter (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List snapshots with their disk cost (layers are shared: a snapshot's size is its own)."""
    with _snapshots(ctx) as client:
        found = client.list(labels=parse_pairs(label, "--label"))
    if as_json:
        print_json(found)
    elif not found:
        console.print("[dim]no snapshots[/dim]")
    else:
        print_table(snapshot_table(found))


@app.command("rm")
def rm(
    ctx: typer.Context,
    snapshots: Annotated[
        list[str], typer.Argument(help="Snapshot ids or names.", show_default=False)
    ],
) -> None:
    """Delete snapshots (refused while sandboxes or snapshots made from one exist)."""
    with _snapshots(ctx) as client:
        for ref in snapshots:
            client.delete(ref)
            sys.stdout.write(ref + "\n")


def snapshot_table(snapshots: list[SnapshotInfo]) -> Table:
    now = datetime.now(UTC)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True, min_width=max(len(s.id) for s in snapshots))
    for column in ("NAME", "SANDBOX", "TEMPLATE", "MEMORY", "SIZE", "CREATED"):
        table.add_column(column, no_wrap=True)
    table.add_column("LABELS", overflow="fold")
    for snap in snapshots:
        age = "-"
        if snap.created_at is not None:
            age = f"{int((now - snap.created_at).total_seconds() // 60)}m ago"
        labels = ",".join(f"{k}={v}" for k, v in sorted(snap.labels.items()))
        table.add_row(
            snap.id,
            escape(snap.name or "-"),
            snap.sandbox_id,
            escape(snap.template),
            "yes" if snap.has_memory else "no",
            human_size(snap.size_bytes),
            age,
            escape(labels) or "-",
        )
    return table
