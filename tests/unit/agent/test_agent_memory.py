"""Huge outputs and files stream through the agent without growing its memory."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from agent_harness import AgentProcess

from atelier.core.agent_client import AgentClient, Exit, Output

MiB = 1024 * 1024


@contextlib.contextmanager
def rss_sampler(agent: AgentProcess) -> Iterator[list[int]]:
    """Samples the agent's VmRSS (KiB) every 20 ms while the block runs."""
    samples = [agent.rss_kib()]

    async def sample() -> None:
        while True:
            samples.append(agent.rss_kib())
            await asyncio.sleep(0.02)

    task = asyncio.get_running_loop().create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        samples.append(agent.rss_kib())


async def test_huge_output_keeps_agent_memory_bounded(
    client: AgentClient, agent: AgentProcess
) -> None:
    await client.run(argv=["true"])  # warm up (threads, imports)
    size = 50 * MiB
    baseline = agent.rss_kib()
    with rss_sampler(agent) as samples:
        session = await client.exec(argv=["head", "-c", str(size), "/dev/zero"])
        received = 0
        async for event in session:
            if isinstance(event, Output):
                assert event.channel == 1
                received += len(event.data)
                await asyncio.sleep(0)  # a consumer that is not infinitely fast
            elif isinstance(event, Exit):
                assert event.exit_code == 0
    assert received == size
    growth_mib = (max(samples) - baseline) / 1024
    assert growth_mib < 16, f"agent RSS grew by {growth_mib:.1f} MiB for {size // MiB} MiB output"


async def test_slow_consumer_backpressures_the_process(
    client: AgentClient, agent: AgentProcess
) -> None:
    baseline = agent.rss_kib()
    session = await client.exec(argv=["head", "-c", str(40 * MiB), "/dev/zero"])
    await anext(session)  # started; now read nothing for a while
    await asyncio.sleep(0.5)
    grown = (agent.rss_kib() - baseline) / 1024
    assert grown < 8, f"agent buffered {grown:.1f} MiB for a consumer that reads nothing"
    result = await session.collect()
    assert len(result.stdout) == 40 * MiB


async def _pattern(total: int, chunk: int = MiB) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (chunk // 256)
    sent = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        sent += len(piece)
        yield piece


@pytest.mark.slow
async def test_streamed_write_and_read_of_200_mb(
    client: AgentClient, agent: AgentProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    size = 200 * MiB
    path = str(tmp_path_factory.mktemp("big") / "big.bin")
    expected = hashlib.sha256()
    async for piece in _pattern(size):
        expected.update(piece)
    baseline = agent.rss_kib()
    with rss_sampler(agent) as samples:
        started = time.perf_counter()
        info = await client.write_file(path, _pattern(size), mode="0600")
        write_s = time.perf_counter() - started
        assert info["size"] == size and info["mode"] == "0600"

        started = time.perf_counter()
        announced, chunks = await client.read_file(path)
        got = hashlib.sha256()
        received = 0
        async for chunk in chunks:
            got.update(chunk)
            received += len(chunk)
        read_s = time.perf_counter() - started
    assert announced == received == size
    assert got.hexdigest() == expected.hexdigest()
    growth_mib = (max(samples) - baseline) / 1024
    assert growth_mib < 24, f"agent RSS grew by {growth_mib:.1f} MiB for a 200 MiB file"
    print(f"\nwrite {size / MiB / write_s:.0f} MB/s, read {size / MiB / read_s:.0f} MB/s")
