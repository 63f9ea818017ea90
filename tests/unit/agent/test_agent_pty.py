"""The pty op: a controlling terminal, input, resize, exit and hang-up."""

from __future__ import annotations

import asyncio
import pwd
import re
import sys

from agent_harness import proc_state, wait_until

from atelier.core.agent_client import AgentClient, Exit, Output, PtySession, Started

_SHELL = ["/bin/bash", "--norc", "--noprofile", "-i"]


async def read_until(session: PtySession, marker: bytes, timeout: float = 5.0) -> bytes:
    seen = bytearray()

    async def reader() -> None:
        async for event in session:
            if isinstance(event, Output):
                seen.extend(event.data)
                if marker in seen:
                    return
            elif isinstance(event, Exit):
                raise AssertionError(f"exited before {marker!r}: {bytes(seen)!r}")

    await asyncio.wait_for(reader(), timeout)
    return bytes(seen)


async def test_pty_echo_resize_and_exit(client: AgentClient) -> None:
    session = await client.pty(argv=_SHELL, cols=80, rows=24, env={"PS1": "$ "})
    assert session.pid > 0
    await session.write(b"stty size; echo MARK-$((40+2))\n")
    out = await read_until(session, b"MARK-42")
    assert b"24 80" in out
    await session.resize(120, 40)
    await session.write(b"stty size; echo MARK-$((50+1))\n")
    out = await read_until(session, b"MARK-51")
    assert b"40 120" in out
    await session.write(b"exit 7\n")
    events = [event async for event in session]
    assert isinstance(events[-1], Exit) and events[-1].exit_code == 7


async def test_pty_is_the_controlling_terminal(client: AgentClient) -> None:
    # tcgetpgrp() only works on the caller's controlling terminal (ENOTTY otherwise)
    script = (
        "import os; assert os.tcgetpgrp(0) == os.getpgrp() == os.getsid(0); "
        "print('CTTY-OK', os.environ['TERM'], os.getuid())"
    )
    session = await client.pty(argv=[sys.executable, "-c", script], user="nobody")
    out = bytearray()
    async for event in session:
        if isinstance(event, Started):
            continue
        if isinstance(event, Output):
            out += event.data
        else:
            assert event.exit_code == 0, bytes(out)
    uid = pwd.getpwnam("nobody").pw_uid
    assert f"CTTY-OK xterm-256color {uid}".encode() in out


async def test_pty_default_shell_and_user(client: AgentClient) -> None:
    session = await client.pty(cmd="id -un; pwd", user="nobody")
    out = bytearray()
    async for event in session:
        if isinstance(event, Output):
            out += event.data
    assert b"nobody" in out and b"/\r\n" in out
    assert session.exit is not None and session.exit.exit_code == 0
    assert pwd.getpwnam("nobody")


async def test_pty_close_hangs_up_the_session(client: AgentClient) -> None:
    session = await client.pty(argv=_SHELL, env={"PS1": "$ "})
    # a job that ignores SIGHUP: only the agent's SIGKILL sweep of the session ends it
    await session.write(b"trap '' HUP; (trap '' HUP; exec sleep 60) & echo BG=$!=GB\n")
    out = b""
    while (found := re.search(rb"BG=(\d+)=GB", out)) is None:
        out += await read_until(session, b"=GB", timeout=5)
    background = int(found.group(1))
    assert proc_state(background) is not None
    await session.close()
    await wait_until(lambda: proc_state(session.pid) is None, timeout=5)
    await wait_until(lambda: proc_state(background) is None, timeout=5)
