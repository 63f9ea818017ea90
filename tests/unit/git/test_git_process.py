"""GitRunner and Scrubber, with /bin/sh standing in for git (no network)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from atelier.git.process import GitRunner, GitTimeout, Scrubber


def test_scrubber_removes_secrets_and_userinfo() -> None:
    scrub = Scrubber(["s3cret", "s3cret-longer"])
    assert scrub("token s3cret-longer and s3cret") == "token *** and ***"
    assert scrub("fatal: https://user:pw@host/r") == "fatal: https://***@host/r"
    assert scrub("nothing here") == "nothing here"


def _runner(on_output: list[str] | None = None, timeout: float = 30) -> GitRunner:
    loop = asyncio.get_running_loop()
    return GitRunner(
        {"PATH": os.environ["PATH"]},
        deadline=loop.time() + timeout,
        scrub=Scrubber(["hunter2"]),
        on_output=None if on_output is None else on_output.append,
        git="/bin/sh",
    )


async def test_output_lines_are_split_scrubbed_and_kept() -> None:
    lines: list[str] = []
    result = await _runner(lines).run(
        "-c", "printf 'out'; printf 'a 10%%\\ra 100%%\\nkey hunter2\\n' >&2; exit 3"
    )
    assert result.returncode == 3 and not result.ok
    assert result.stdout == "out"
    assert lines == ["a 10%", "a 100%", "key ***"]
    assert "hunter2" not in result.stderr


async def test_echo_off_keeps_stderr_but_not_output() -> None:
    lines: list[str] = []
    result = await _runner(lines).run("-c", "echo oops >&2", echo=False)
    assert lines == [] and result.stderr == "oops"


def _alive(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


async def test_timeout_kills_the_whole_process_group() -> None:
    marker = f"atelier-test-{uuid.uuid4().hex}"
    # a grandchild in the same group, as git-remote-https or ssh would be
    script = f"sh -c 'sleep 300; : {marker}' & sleep 300; : {marker}"
    started = time.monotonic()
    with pytest.raises(GitTimeout):
        await _runner(timeout=1).run("-c", script)
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while _alive(marker) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _alive(marker) == []


async def test_cancellation_kills_the_process_group() -> None:
    marker = f"atelier-test-{uuid.uuid4().hex}"
    task = asyncio.create_task(_runner().run("-c", f"sleep 300; : {marker}"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while _alive(marker) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _alive(marker) == []


async def test_a_passed_deadline_runs_nothing() -> None:
    with pytest.raises(GitTimeout):
        await _runner(timeout=-1).run("-c", "true")
