"""Run one git command as an asyncio subprocess, under a shared deadline.

Each command starts in its own session (so its own process group): on a
timeout or a cancellation the whole group -- git, ``git-remote-https``,
``ssh``, ``git-upload-pack`` helpers -- is killed, not just the top process.
Everything git writes to stderr passes through a scrubber before it is kept
(for error classification) or handed to ``on_output``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GitResult", "GitRunner", "GitTimeout", "Scrubber"]

_LINE_SPLIT = re.compile(r"[\r\n]+")
# userinfo in any URL git might print: scheme://user:secret@host
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


class GitTimeout(Exception):
    """The clone's deadline passed while a git command was running."""


class Scrubber:
    """Removes secrets (and any URL userinfo) from text meant for people."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = [s for s in sorted(set(secrets), key=len, reverse=True) if s]

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return _URL_USERINFO.sub(r"\g<scheme>***@", text)


@dataclass(frozen=True, slots=True)
class GitResult:
    """How a git command ended: its exit status, stdout and (scrubbed) stderr."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when git exited 0."""
        return self.returncode == 0


class GitRunner:
    """Runs git commands with one environment, deadline, scrubber and output sink."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        deadline: float,
        scrub: Scrubber,
        on_output: Callable[[str], None] | None = None,
        git: str = "git",
    ) -> None:
        self.env = env
        self.deadline = deadline
        self.scrub = scrub
        self.on_output = on_output
        self.git = git

    async def run(self, *args: str, cwd: Path | None = None, echo: bool = True) -> GitResult:
        """Run ``git <args>``; raise :class:`GitTimeout` when the deadline passes.

        ``echo``: hand stderr lines to ``on_output`` (off for plumbing whose
        chatter is of no interest, e.g. ``rev-parse``).
        """
        loop = asyncio.get_running_loop()
        remaining = self.deadline - loop.time()
        if remaining <= 0:
            raise GitTimeout
        proc = await asyncio.create_subprocess_exec(
            self.git,
            *args,
            cwd=cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        tail: deque[str] = deque(maxlen=400)
        try:
            out, _, code = await asyncio.wait_for(
                asyncio.gather(
                    proc.stdout.read(),
                    self._pump(proc.stderr, tail, echo),
                    proc.wait(),
                ),
                timeout=remaining,
            )
        except TimeoutError:
            raise GitTimeout from None
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return GitResult(code, out.decode("utf-8", "replace"), "\n".join(tail))

    async def _pump(self, stream: asyncio.StreamReader, tail: deque[str], echo: bool) -> None:
        pending = ""
        while True:
            chunk = await stream.read(8192)
            if not chunk:
                break
            pending += chunk.decode("utf-8", "replace")
            *lines, pending = _LINE_SPLIT.split(pending)
            for line in lines:
                self._emit(line, tail, echo)
        if pending:
            self._emit(pending, tail, echo)

    def _emit(self, line: str, tail: deque[str], echo: bool) -> None:
        line = self.scrub(line.rstrip())
        if not line:
            return
        tail.append(line)
        if echo and self.on_output is not None:
            self.on_output(line)


def _kill_group(pid: int) -> None:
    # The child called setsid(), so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
