"""SIGUSR1/SIGUSR2: the agent drops and re-takes its socket (for checkpoints)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from collections.abc import Iterator

import pytest
from agent_harness import AgentProcess, start_agent, stop_agent, wait_until

from atelier.agent import bootstrap
from atelier.core.agent_client import AgentClient
from atelier.errors import AgentFailure


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = start_agent(tmp_path_factory.mktemp("agent-release"))
    yield proc
    stop_agent(proc)
    log = proc.log.read_text()
    assert proc.proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


def _is_socket(path: os.PathLike[str]) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _open_fds(pid: int) -> set[str]:
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
    return found


def _socket_count(pid: int) -> int:
    return sum(1 for target in _open_fds(pid) if target.startswith("socket:"))


async def test_release_and_retake_keeps_processes(agent: AgentProcess) -> None:
    await wait_until(lambda: _is_socket(agent.socket), timeout=15)
    first = await AgentClient.connect(agent.socket, timeout=10)
    counter = await first.exec(
        "i=0; while [ $i -lt 40 ]; do echo $i; i=$((i+1)); sleep 0.05; done",
        background=True,
    )
    await counter.detach()
    sockets_listening = _socket_count(agent.pid)

    released = agent.socket.parent / bootstrap.RELEASED_NAME
    assert not released.exists()
    os.kill(agent.pid, signal.SIGUSR1)
    await wait_until(released.exists, timeout=10)  # written last
    assert not _is_socket(agent.socket)
    # the connection was closed by the agent, and no socket fd is left open in it
    # (the asyncio self-pipe is a socketpair: the count drops by listener + connection)
    with pytest.raises(Exception):  # noqa: B017 - any failure of the lost connection
        await asyncio.wait_for(first.ping(), 5)
    await first.close()
    assert _socket_count(agent.pid) == sockets_listening - 2
    with pytest.raises(AgentFailure):
        await AgentClient.connect(agent.socket, timeout=0.3)
    await asyncio.sleep(0.3)  # the counter goes on while nobody can connect

    os.kill(agent.pid, signal.SIGUSR2)
    await wait_until(lambda: _is_socket(agent.socket), timeout=10)
    assert not released.exists()
    second = await AgentClient.connect(agent.socket, timeout=10)
    try:
        result = await (await second.attach(counter.pid)).collect()
        # every line from before, during and after the release is there, in order
        assert result.exit_code == 0
        assert result.stdout.decode().split() == [str(i) for i in range(40)]
        assert (await second.ping()).pid == agent.pid
    finally:
        await second.close()


async def test_repeated_signals_are_harmless(agent: AgentProcess) -> None:
    await wait_until(lambda: _is_socket(agent.socket), timeout=15)
    async with await AgentClient.connect(agent.socket, timeout=10) as client:
        os.kill(agent.pid, signal.SIGUSR2)  # already listening: the connection stays
        await asyncio.sleep(0.3)
        assert (await client.run("echo ok")).stdout == b"ok\n"
    os.kill(agent.pid, signal.SIGUSR1)
    await wait_until(lambda: not _is_socket(agent.socket), timeout=10)
    os.kill(agent.pid, signal.SIGUSR1)  # already released: nothing to do
    await asyncio.sleep(0.3)
    assert not os.path.lexists(agent.socket)
    os.kill(agent.pid, signal.SIGUSR2)
    await wait_until(lambda: _is_socket(agent.socket), timeout=10)
    async with await AgentClient.connect(agent.socket, timeout=10) as client:
        assert (await client.run("echo again")).stdout == b"again\n"
