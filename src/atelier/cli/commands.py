"""Commands that work inside a sandbox: exec, shell, cp."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, TextIO

import typer

from atelier.cli import transfer
from atelier.cli.context import state
from atelier.cli.output import print_error, print_warning
from atelier.cli.params import parse_pairs

__all__ = ["cp", "exec_", "shell"]

SandboxArg = Annotated[str, typer.Argument(help="Sandbox id.", show_default=False)]
UserOpt = Annotated[
    str | None, typer.Option("--user", "-u", help="Run as this user (default: user).")
]
CwdOpt = Annotated[str | None, typer.Option("--cwd", "-w", help="Working directory.")]


def _writer(stream: Callable[[], TextIO]) -> Callable[[str], None]:
    def write(data: str) -> None:
        out = stream()
        out.write(data)
        out.flush()

    return write


def _exit_status(code: int) -> int:
    return code if 0 <= code <= 255 else 1


def exec_(
    ctx: typer.Context,
    sandbox: SandboxArg,
    command: Annotated[
        list[str],
        typer.Argument(
            help="One argument runs as a shell string; several run as argv. Put '--' before it.",
            show_default=False,
        ),
    ],
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="K=V (repeatable).")] = None,
    cwd: CwdOpt = None,
    user: UserOpt = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Kill the command after N seconds.")
    ] = None,
    stdin: Annotated[
        bool, typer.Option("--stdin", "-i", help="Send this program's stdin to the command.")
    ] = False,
) -> None:
    """Run a command in a sandbox, streaming its output; exit with its exit code."""
    cmd, argv = (command[0], None) if len(command) == 1 else (None, command)
    data = sys.stdin.read() if stdin else None
    with state(ctx).sandbox(sandbox) as sb:
        result = sb.commands.run(
            cmd,
            argv=argv,
            env=parse_pairs(env, "--env"),
            cwd=cwd,
            user=user,
            timeout=timeout,
            stdin=data,
            on_stdout=_writer(lambda: sys.stdout),
            on_stderr=_writer(lambda: sys.stderr),
        )
    if result.timed_out:
        print_warning(f"command timed out after {timeout:g}s and was killed")
    raise typer.Exit(_exit_status(result.exit_code))


def shell(
    ctx: typer.Context,
    sandbox: SandboxArg,
    cmd: Annotated[
        str | None, typer.Option("--cmd", "-c", help="Program to run (default: a login shell).")
    ] = None,
    cwd: CwdOpt = None,
    user: UserOpt = None,
) -> None:
    """Open an interactive terminal in a sandbox."""
    if not sys.stdin.isatty():
        print_error(
            "atelier shell needs an interactive terminal, but stdin is not a tty "
            "(use 'atelier exec' to run a command)",
            "not_a_tty",
        )
        raise typer.Exit(2)
    from atelier.cli.terminal import bridge, terminal_size

    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    with state(ctx).sandbox(sandbox) as sb:
        cols, rows = terminal_size(stdin_fd)
        session = sb.pty.create(cols=cols, rows=rows, cmd=cmd, user=user, cwd=cwd)
        code = bridge(session, stdin_fd, stdout_fd, size=(cols, rows))
    raise typer.Exit(_exit_status(code))


def cp(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="SB:/path, a local path, or - (stdin).")],
    destination: Annotated[str, typer.Argument(help="SB:/path, a local path, or - (stdout).")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Copy directories recursively.")
    ] = False,
) -> None:
    """Copy files between this machine and sandboxes (streamed)."""
    transfer.copy(state(ctx), source, destination, recursive=recursive)
