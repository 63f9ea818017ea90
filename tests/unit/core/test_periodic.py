import asyncio
import logging

import pytest

from atelier.core.periodic import Periodic


async def test_a_failing_pass_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    passes: list[int] = []
    done = asyncio.Event()

    async def step() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("boom")
        if len(passes) == 3:
            done.set()

    loop = Periodic("test-loop", 0.001, step, logging.getLogger("test.periodic"))
    loop.start()
    loop.start()  # idempotent: still one task
    await asyncio.wait_for(done.wait(), 10)
    await loop.stop()
    stopped_at = len(passes)
    await asyncio.sleep(0.01)
    assert len(passes) == stopped_at  # stopped means no more passes
    assert "test-loop pass failed" in caplog.text
    await loop.stop()  # stopping twice is fine
