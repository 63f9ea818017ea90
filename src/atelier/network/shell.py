"""Run ``ip``, ``nft`` and friends from asyncio (the network package's only way out)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import RuntimeFailure

__all__ = ["Result", "run"]


@dataclass(frozen=True, slots=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip())[-2000:]
        return f"{' '.join(self.argv[:3])} exited {self.returncode}: {text or '(no output)'}"


async def run(
    argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = 30
) -> Result:
    """Run ``argv``; :class:`RuntimeFailure` on a missing binary, a timeout, or
    (with ``check``) a non-zero exit."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"},
        )
    except OSError as exc:
        raise RuntimeFailure(f"cannot run {argv[0]}: {exc}", details={"argv": list(argv)}) from exc
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else None), timeout
        )
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise RuntimeFailure(
                f"{argv[0]} timed out after {timeout} s", details={"argv": list(argv)}
            ) from exc
        raise
    result = Result(
        tuple(argv),
        proc.returncode or 0,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )
    if check and not result.ok:
        raise RuntimeFailure(
            result.describe(), details={"argv": list(argv), "stderr": result.stderr}
        )
    return result
