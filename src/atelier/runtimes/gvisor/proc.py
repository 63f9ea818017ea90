"""Run host commands from asyncio with a timeout, capturing stderr for errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ...errors import RuntimeFailure

__all__ = ["CommandResult", "kill_processes", "processes_with_arg", "run_command"]

_MAX_DETAIL = 4000


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """``<cmd> exited N: <stderr or stdout>`` for error messages."""
        text = (self.stderr.strip() or self.stdout.strip())[-_MAX_DETAIL:]
        words = [os.path.basename(self.argv[0])]
        words += [a for a in self.argv[1:] if not a.startswith("-")][:2]
        name = " ".join(words)
        return f"{name} exited {self.returncode}: {text or '(no output)'}"


def _failure(message: str, argv: Sequence[str], **extra: Any) -> RuntimeFailure:
    return RuntimeFailure(message, details={"argv": list(argv), **extra})


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    input: bytes | None = None,
) -> CommandResult:
    """Run ``argv``; raise :class:`RuntimeFailure` on timeout, on a missing
    binary, or (with ``check``) on a non-zero exit, quoting its stderr.

    ``stdout``/``stderr`` may be open files (e.g. a console log the command's
    children inherit); then the corresponding result field is empty.
    """
    args = tuple(str(a) for a in argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    except OSError as exc:
        raise _failure(f"cannot run {args[0]}: {exc.strerror or exc}", args) from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise _failure(f"{' '.join(args[:3])} timed out after {timeout:g}s", args) from exc
    result = CommandResult(
        args,
        proc.returncode if proc.returncode is not None else -1,
        (out or b"").decode("utf-8", "replace"),
        (err or b"").decode("utf-8", "replace"),
    )
    if check and not result.ok:
        raise _failure(
            result.describe(),
            args,
            returncode=result.returncode,
            stderr=result.stderr[-_MAX_DETAIL:],
        )
    return result


def processes_with_arg(
    needle: str, proc_root: Path = Path("/proc"), exclude_zombies: bool = True
) -> list[int]:
    """PIDs whose command line has an argument equal to ``needle`` or ending
    in ``=needle`` (e.g. ``--bundle=<dir>``)."""
    found = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if exclude_zombies and _is_zombie(entry):
                continue
        except OSError:
            continue
        want = needle.encode()
        if any(a == want or a.endswith(b"=" + want) for a in args):
            found.append(int(entry.name))
    return found


def _is_zombie(entry: Path) -> bool:
    stat = (entry / "stat").read_text()
    return stat[stat.rindex(")") + 2 :].startswith("Z")


async def kill_processes(pids: list[int], timeout: float = 5.0) -> list[int]:
    """SIGKILL ``pids`` and wait until they are dead (or zombies); return
    those still alive after ``timeout``."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        alive = [p for p in alive if _alive(p)]
    return alive


def _alive(pid: int) -> bool:
    entry = Path("/proc") / str(pid)
    try:
        return not _is_zombie(entry)
    except (OSError, ValueError):
        return False
