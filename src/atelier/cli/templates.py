"""``atelier template build|pull|ls|rm`` over the API, and ``template local ...``.

Builds and pulls run on the server as operations; the CLI follows the
operation's log: on a terminal a Rich display (the current ``step N/M`` as a
bar, the elapsed time, the log lines scrolling above it), otherwise the lines
with their elapsed time. A failed operation ends with one ``error:`` line and a
non-zero exit status. ``template local`` is the host tool ``python -m
atelier.images`` (root, no server needed), which ``make up`` uses.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Annotated

import typer
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

from atelier.cli.context import state
from atelier.cli.output import (
    console,
    err_console,
    exit_code_for,
    print_error,
    print_json,
    print_table,
)
from atelier.cli.params import parse_pairs
from atelier.errors import AtelierError, InvalidRequest
from atelier.sdk.templates import Operation, Templates

__all__ = ["StepDisplay", "parse_step", "template_app"]

template_app = typer.Typer(
    name="template",
    help="Templates on the server: build from a Dockerfile, pull an image, list, remove.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
_STEP = re.compile(r"\bstep (\d+)/(\d+)\b")


def parse_step(line: str) -> tuple[int, int] | None:
    """``(N, M)`` of a log line saying ``step N/M``."""
    match = _STEP.search(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


class StepDisplay:
    """Feeds log lines to a Rich progress bar (terminal) or prints them (logs)."""

    def __init__(self, out: Console, title: str) -> None:
        self.out = out
        self.title = title
        self.started = time.monotonic()
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.step: tuple[int, int] | None = None

    def __enter__(self) -> StepDisplay:
        if self.out.is_terminal:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.out,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=None)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def feed(self, line: str) -> None:
        step = parse_step(line)
        if step is not None:
            self.step = step
        if self.progress is not None and self.task is not None:
            self.progress.console.print(line, markup=False, highlight=False)
            if step is not None:
                done, total = step
                self.progress.update(
                    self.task,
                    description=f"{self.title}: step {done}/{total}",
                    completed=done - 1,  # step N is running: N-1 are done
                    total=total,
                )
            return
        elapsed = time.monotonic() - self.started
        self.out.print(f"[{elapsed:6.1f}s] {line}", markup=False, highlight=False)

    def finish(self) -> None:
        if self.progress is not None and self.task is not None and self.step is not None:
            self.progress.update(self.task, completed=self.step[1], total=self.step[1])


def _follow(op: Operation, title: str, quiet: bool) -> None:
    """Show the operation's log until it ends; raise its error if it failed."""
    if quiet:
        op.wait()
        return
    with StepDisplay(err_console, title) as display:
        for line in op.logs(follow=True):
            display.feed(line.line)
        display.finish()
    op.wait()


def _finish(op: Operation, title: str, quiet: bool) -> None:
    started = time.monotonic()
    try:
        _follow(op, title, quiet)
    except AtelierError as exc:
        first = exc.message.strip().splitlines()[0] if exc.message.strip() else exc.code
        print_error(f"{title} failed: {first}", exc.code)
        raise typer.Exit(exit_code_for(exc)) from None
    result = op.info.result or {}
    console.print(
        f"[green]template {result.get('template', op.info.target)!r} version "
        f"{result.get('version', '?')} ready[/] ({time.monotonic() - started:.1f} s, "
        f"operation {op.id})"
    )


def _dockerfile_in(context: Path, dockerfile: str | None) -> str:
    """The Dockerfile's path inside the context, as the server wants it."""
    if dockerfile is None:
        return "Dockerfile"
    path = Path(dockerfile)
    candidate = path if path.is_absolute() else Path.cwd() / path
    if not candidate.exists() and not path.is_absolute():
        candidate = context / path  # already relative to the context
    try:
        return Path(os.path.relpath(candidate.resolve(), context.resolve())).as_posix()
    except ValueError:
        pass
    raise InvalidRequest(f"--file {dockerfile}: the Dockerfile must be inside the context")


@template_app.command("build")
def build(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The template to build (a new version).")],
    context: Annotated[
        Path, typer.Argument(help="The build context directory (uploaded as a tar).")
    ] = Path("."),
    file: Annotated[
        str | None,
        typer.Option("--file", "-f", help="The Dockerfile (default: CONTEXT/Dockerfile)."),
    ] = None,
    build_arg: Annotated[
        list[str] | None, typer.Option("--build-arg", help="K=V build argument (repeatable).")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="The stage to build.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Run every step again.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No log, no progress.")] = False,
) -> None:
    """Build a template from a Dockerfile on the server, showing its progress."""
    if not context.is_dir():
        raise InvalidRequest(f"build context {context} is not a directory")
    dockerfile = _dockerfile_in(context, file)
    if dockerfile.startswith("../"):
        raise InvalidRequest(f"--file {file}: the Dockerfile must be inside the context")
    with Templates(**state(ctx).sdk_options()) as templates:
        op = templates.build(
            name,
            context,
            dockerfile=dockerfile,
            build_args=parse_pairs(build_arg, "--build-arg"),
            target=target,
            no_cache=no_cache,
        )
        _finish(op, f"build {name}", quiet)


@template_app.command("pull")
def pull(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The template to make (a new version).")],
    image: Annotated[str, typer.Argument(help="Image reference, e.g. alpine:3.")],
    creds: Annotated[
        str | None,
        typer.Option(
            "--creds",
            envvar="ATELIER_REGISTRY_CREDS",
            help="USER:TOKEN for a private registry (or $ATELIER_REGISTRY_CREDS).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Pull again even if it came from this image.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No log, no progress.")] = False,
) -> None:
    """Pull a registry image into a template on the server."""
    with Templates(**state(ctx).sdk_options()) as templates:
        op = templates.pull(name, image, credentials=creds, force=force)
        _finish(op, f"pull {name}", quiet)


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:.0f} MiB"


@template_app.command("ls")
def ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the server's templates and their versions."""
    with Templates(**state(ctx).sdk_options()) as templates:
        found = templates.list()
    if as_json:
        print_json(found)
        return
    if not found:
        console.print("[dim]no templates[/dim]")
        return
    table = Table("NAME", "VERSION", "KEPT", "READY", "SIZE", "CREATED", box=None)
    for t in found:
        table.add_row(
            t.name,
            str(t.version),
            ",".join(map(str, t.versions)) or "-",
            "yes" if t.ready else "no",
            _size(t.size_bytes),
            t.created_at.strftime("%Y-%m-%d %H:%M") if t.created_at else "-",
        )
    print_table(table)


@template_app.command("rm")
def rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The template to delete (every version).")],
) -> None:
    """Delete a template; refused while sandboxes use it."""
    with Templates(**state(ctx).sdk_options()) as templates:
        templates.delete(name)
    console.print(f"deleted template {name!r}")


@template_app.command(
    "local",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def local(ctx: typer.Context) -> None:
    """The host tool (root, no server): ``build base``, ``pull NAME IMAGE``,
    ``import NAME FILE.tar``, ``ls``, ``rm NAME``, ``cache prune``; ``--help``
    for the options."""
    from atelier.images.__main__ import main as images_main

    raise typer.Exit(images_main(list(ctx.args)))
