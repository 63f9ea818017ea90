"""Rendering for the CLI: tables, JSON, and the one-line error format."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from atelier.errors import AtelierError
from atelier.sdk.models import SandboxInfo

__all__ = [
    "console",
    "err_console",
    "exit_code_for",
    "print_error",
    "print_json",
    "print_table",
    "print_warning",
    "sandbox_table",
    "to_jsonable",
]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_STATE_STYLE = {
    "running": "green",
    "creating": "cyan",
    "stopping": "yellow",
    "stopped": "yellow",
    "paused": "blue",
    "hibernated": "blue",
    "error": "red",
    "deleted": "dim",
}


def exit_code_for(exc: AtelierError) -> int:
    """2 for a request the user can fix (4xx, not 429), 1 for everything else."""
    return 2 if 400 <= exc.status < 500 and exc.status != 429 else 1


def print_error(message: str, code: str | None = None) -> None:
    """``error: <message> (<code>)`` in red on stderr, on one line."""
    one_line = " ".join(message.split())
    suffix = f" ({code})" if code else ""
    err_console.print(f"[red]error: {escape(one_line)}{escape(suffix)}[/red]")


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning: {escape(message)}[/yellow]")


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    """Plain JSON on stdout (no colors: meant for scripts)."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2) + "\n")
    sys.stdout.flush()


def print_table(table: Table) -> None:
    """A table on stdout; piped, at its natural width (no 80-column wrapping or "…")."""
    if console.is_terminal:
        console.print(table)
    else:  # Console(width=) is the only way past the 80 columns Rich assumes for a pipe
        Console(highlight=False, soft_wrap=True, width=10_000).print(table)


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = int((when - now).total_seconds())
    future, seconds = seconds > 0, abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds // size}{unit}"
            break
    else:
        text = f"{seconds}s"
    return f"in {text}" if future else f"{text} ago"


def sandbox_table(sandboxes: list[SandboxInfo], now: datetime | None = None) -> Table:
    now = now or datetime.now(UTC)
    table = Table(box=None, header_style="bold", pad_edge=False)
    # ids are copied from here: a narrow terminal shrinks every column but that one
    table.add_column("ID", no_wrap=True, min_width=max((len(sb.id) for sb in sandboxes), default=2))
    for column in ("STATE", "TEMPLATE", "RUNTIME", "CPU", "MEM", "CREATED", "EXPIRES"):
        table.add_column(column, no_wrap=True)
    table.add_column("LABELS", overflow="fold")  # wrap, never cut a label short
    for sb in sandboxes:
        style = _STATE_STYLE.get(sb.state, "")
        labels = ",".join(f"{k}={v}" for k, v in sorted(sb.labels.items()))
        table.add_row(
            sb.id,
            f"[{style}]{escape(sb.state)}[/{style}]" if style else escape(sb.state),
            escape(sb.template),
            escape(sb.runtime),
            str(sb.vcpus),
            f"{sb.memory_mib}M",
            _ago(sb.created_at, now),
            "never" if sb.expires_at is None else _ago(sb.expires_at, now),
            escape(labels) or "-",
        )
    return table
