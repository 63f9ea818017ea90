"""Fixtures of the agent tests: a real agent subprocess per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from agent_harness import AgentProcess, start_agent, stop_agent

from atelier.core.agent_client import AgentClient


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = start_agent(tmp_path_factory.mktemp("agent"))
    yield proc
    stop_agent(proc)
    log = proc.log.read_text()
    assert proc.proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[AgentClient]:
    c = await AgentClient.connect(agent.socket, timeout=15)
    try:
        yield c
    finally:
        await c.close()
