"""fs.watch (inotify) against a real agent subprocess."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from atelier.core.agent_client import AgentClient, WatchEvent, WatchStream
from atelier.errors import FileNotFound, NotADirectory


async def next_matching(
    watch: WatchStream, event: str, path: Path, timeout: float = 5.0
) -> WatchEvent:
    async def find() -> WatchEvent:
        async for item in watch:
            if item["event"] == event and item["path"] == str(path):
                return item
        raise AssertionError("watch ended")

    return await asyncio.wait_for(find(), timeout)


async def test_watch_create_modify_delete_rename(client: AgentClient, tmp_path: Path) -> None:
    async with client.watch(str(tmp_path)) as watch:
        target = tmp_path / "a.txt"
        target.write_text("one")
        created = await next_matching(watch, "create", target)
        assert created == {"type": "event", "event": "create", "path": str(target), "is_dir": False}
        with target.open("a") as fh:
            fh.write("two")
        await next_matching(watch, "modify", target)
        target.rename(tmp_path / "b.txt")
        await next_matching(watch, "rename", target)
        await next_matching(watch, "rename", tmp_path / "b.txt")
        (tmp_path / "b.txt").unlink()
        await next_matching(watch, "delete", tmp_path / "b.txt")
        (tmp_path / "d").mkdir()
        made = await next_matching(watch, "create", tmp_path / "d")
        assert made["is_dir"] is True
        # not recursive: nothing below d is reported
        (tmp_path / "d" / "inner").write_text("x")
        (tmp_path / "marker").write_text("m")
        seen = []
        async for item in watch:
            seen.append(item["path"])
            if item["path"] == str(tmp_path / "marker"):
                break
        assert str(tmp_path / "d" / "inner") not in seen


async def test_watch_recursive_follows_new_directories(client: AgentClient, tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    watch = client.watch(str(tmp_path), recursive=True)
    await watch.ready()
    try:
        (tmp_path / "existing" / "f").write_text("1")
        await next_matching(watch, "create", tmp_path / "existing" / "f")
        (tmp_path / "new").mkdir()
        await next_matching(watch, "create", tmp_path / "new")
        await asyncio.sleep(0.1)  # the agent adds a watch for the new directory
        (tmp_path / "new" / "g").write_text("2")
        await next_matching(watch, "create", tmp_path / "new" / "g")
        # a tree created at once: entries that appear before the watch is added
        # are still reported (found by the scan of the new directory)
        (tmp_path / "p" / "q").mkdir(parents=True)
        (tmp_path / "p" / "q" / "r").write_text("3")
        await next_matching(watch, "create", tmp_path / "p" / "q" / "r")
    finally:
        await watch.aclose()


async def test_watch_errors_and_close(client: AgentClient, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectory):
        await client.watch(str(tmp_path / "file")).ready()
    with pytest.raises(FileNotFound):
        await client.watch(str(tmp_path / "missing")).ready()
    # the watched directory itself goes away: the watch ends
    (tmp_path / "gone").mkdir()
    watch = client.watch(str(tmp_path / "gone"))
    await watch.ready()
    (tmp_path / "gone").rmdir()
    events = [item async for item in watch]
    assert events[-1]["event"] == "delete" and events[-1]["path"] == str(tmp_path / "gone")
    # many watches opened and closed leave the connection healthy
    for _ in range(20):
        w = client.watch(str(tmp_path))
        await w.ready()
        await w.aclose()
    assert (await client.run(argv=["true"])).exit_code == 0
