"""``python -m atelier.images``: build, list and remove templates.

python -m atelier.images build base [--force] [--data-dir DIR] [--include PKG,...]
python -m atelier.images ls [--data-dir DIR]
python -m atelier.images rm NAME [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..config import Settings
from ..errors import AtelierError
from .debootstrap import ProgressEvent, build_template
from .store import TemplateInfo, TemplateStore

__all__ = ["main"]

_PHASE_LABELS = {
    "prepare": "Preparing",
    "download": "Downloading",
    "extract": "Extracting",
    "unpack": "Unpacking",
    "configure": "Configuring",
    "finalize": "Finishing",
    "done": "Done",
}


def _settings(data_dir: Path | None) -> Settings:
    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


class _Bar:
    """One bar per phase: the phase's count against its total (a pulsing bar
    when debootstrap does not announce a total). Debootstrap unpacks and
    configures twice (required, then base packages): a phase keeps its bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.current: tuple[str, int] | None = None  # (phase, done)

    def __call__(self, event: ProgressEvent) -> None:
        if self.current is not None and self.current[0] != event.phase:
            phase, done = self.current  # show the phase we leave as complete
            self.progress.update(self.tasks[phase], total=max(done, 1), completed=max(done, 1))
        task = self.tasks.get(event.phase)
        if task is None:
            label = _PHASE_LABELS.get(event.phase, event.phase)
            task = self.tasks[event.phase] = self.progress.add_task(label, total=None, detail="")
        self.current = (event.phase, event.done)
        self.progress.update(
            task, completed=event.done, total=event.total, detail=event.message[:60]
        )


class _Lines:
    """For logs (no terminal): one line per phase change."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.phase: str | None = None
        self.started = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase == self.phase:
            return
        self.phase = event.phase
        elapsed = time.monotonic() - self.started
        label = _PHASE_LABELS.get(event.phase, event.phase)
        self.console.print(
            f"[{elapsed:5.1f}s] {label}: {event.message}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


def _build(args: argparse.Namespace, console: Console) -> int:
    settings = _settings(args.data_dir)
    include = [p for p in (args.include or "").split(",") if p]
    started = time.monotonic()

    def build(on_progress: Callable[[ProgressEvent], None] | None) -> TemplateInfo:
        return build_template(
            settings, args.name, force=args.force, packages=include, on_progress=on_progress
        )

    if args.quiet:
        info = build(None)
    elif not console.is_terminal:
        info = build(_Lines(console))
    else:
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[detail]}"),
            console=console,
        ) as progress:
            info = build(_Bar(progress))
    elapsed = time.monotonic() - started
    console.print(
        f"[green]template {info.name!r} ready[/] at {info.rootfs} "
        f"({_human(info.size_bytes)}, {elapsed:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _ls(args: argparse.Namespace, console: Console) -> int:
    templates = TemplateStore(_settings(args.data_dir)).list()
    if not templates:
        console.print("no templates; build one with: python -m atelier.images build base")
        return 0
    table = Table("name", "runtime", "ready", "size", "created", "rootfs")
    for t in templates:
        table.add_row(
            t.name,
            t.runtime,
            "yes" if t.ready else "[red]no[/]",
            _human(t.size_bytes),
            t.created_at.isoformat() if t.created_at else "-",
            str(t.rootfs),
        )
    console.print(table)
    return 0


def _rm(args: argparse.Namespace, console: Console) -> int:
    TemplateStore(_settings(args.data_dir)).remove(args.name)
    console.print(f"removed template {args.name!r}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m atelier.images", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="Atelier data directory (default: $ATELIER_DATA_DIR or /var/lib/atelier)",
    )
    build = sub.add_parser("build", parents=[common], help="build a Debian template")
    build.add_argument("name", nargs="?", default="base")
    build.add_argument("--force", action="store_true", help="rebuild even if it is ready")
    build.add_argument("--include", help="extra Debian packages, comma-separated")
    build.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)
    ls = sub.add_parser("ls", parents=[common], help="list templates")
    ls.set_defaults(func=_ls)
    rm = sub.add_parser("rm", parents=[common], help="remove a template")
    rm.add_argument("name")
    rm.set_defaults(func=_rm)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    errors = Console(stderr=True)
    try:
        code: int = args.func(args, console)
    except AtelierError as exc:
        first, _, rest = exc.message.partition("\n")
        errors.print(f"[bold red]error:[/] {first}", highlight=False)
        if rest:
            errors.print(rest, style="dim", highlight=False, markup=False)
        return 1
    except OSError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        errors.print("[bold red]interrupted[/]")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
