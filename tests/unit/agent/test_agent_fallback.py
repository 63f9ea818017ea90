"""The fork-based fallback spawner (used where per-thread credentials are unavailable)."""

from __future__ import annotations

import pwd
import sys
from collections.abc import Iterator

import pytest
from agent_harness import AgentProcess, start_agent, stop_agent

from atelier.core.agent_client import AgentClient, Output
from atelier.errors import InvalidRequest


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = start_agent(tmp_path_factory.mktemp("agent-fork"), env={"ATELIER_AGENT_SPAWN": "fork"})
    yield proc
    stop_agent(proc)
    log = proc.log.read_text()
    assert "spawning via fork" in log  # the fallback really was used
    assert "Traceback" not in log, log[-3000:]


async def test_fallback_exec(client: AgentClient) -> None:
    nobody = pwd.getpwnam("nobody")
    result = await client.run("id -u; id -G; pwd", user="nobody", cwd="/tmp")
    assert result.stdout.decode().split("\n")[:3] == [
        str(nobody.pw_uid),
        str(nobody.pw_gid),
        "/tmp",
    ]
    assert (await client.run(argv=["cat"], input=b"in")).stdout == b"in"
    missing = await client.run(argv=["no-such-command-here"])
    assert missing.exit_code == 127 and b"command not found" in missing.stderr
    with pytest.raises(InvalidRequest, match="cwd"):
        await client.exec(argv=["true"], cwd="/no/such/dir")
    timed = await client.run(argv=["sleep", "5"], timeout=0.2)
    assert (timed.exit_code, timed.timed_out) == (137, True)


async def test_fallback_pty(client: AgentClient) -> None:
    script = "import os; assert os.tcgetpgrp(0) == os.getpgrp(); print('CTTY-OK', os.getuid())"
    session = await client.pty(argv=[sys.executable, "-c", script], user="nobody")
    out = bytearray()
    async for event in session:
        if isinstance(event, Output):
            out += event.data
    assert session.exit is not None and session.exit.exit_code == 0, bytes(out)
    assert f"CTTY-OK {pwd.getpwnam('nobody').pw_uid}".encode() in out
