"""fs.* ops against a real agent subprocess, through AgentClient."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_harness import wait_until

from atelier.core.agent_client import AgentClient
from atelier.errors import (
    DirectoryNotEmpty,
    FileExists,
    FileNotFound,
    FilePermissionDenied,
    InvalidPath,
    InvalidRequest,
    IsADirectory,
    NotADirectory,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


async def test_write_then_read_and_stat(client: AgentClient, root: Path) -> None:
    target = root / "sub" / "dir" / "hello.txt"  # parents are created
    info = await client.write_file(str(target), b"hello\n")
    assert target.read_bytes() == b"hello\n"
    assert info["name"] == "hello.txt" and info["path"] == str(target)
    assert (info["type"], info["size"], info["mode"]) == ("file", 6, "0644")
    assert (info["owner"], info["group"]) == ("root", "root")
    assert info["modified_at"].endswith("Z") and info["symlink_target"] is None
    size, chunks = await client.read_file(str(target))
    assert size == 6 and b"".join([c async for c in chunks]) == b"hello\n"
    assert await client.stat(str(target)) == info

    # replace atomically, with a mode and an owner
    info = await client.write_file(str(target), [b"a", b"", b"bc"], mode="0600", user="nobody")
    assert (info["size"], info["mode"], info["owner"]) == (3, "0600", "nobody")
    st = target.stat()
    assert st.st_uid == pwd.getpwnam("nobody").pw_uid and st.st_mode & 0o777 == 0o600
    assert sorted(os.listdir(target.parent)) == ["hello.txt"]  # no temp files left
    empty = await client.write_file(str(root / "empty"), b"")
    assert empty["size"] == 0


async def test_read_stops_early_without_leaking(client: AgentClient, root: Path) -> None:
    path = root / "big"
    path.write_bytes(b"x" * (5 * 1024 * 1024))
    size, chunks = await client.read_file(str(path))
    assert size == 5 * 1024 * 1024
    first = await anext(chunks)
    assert first and set(first) == {ord("x")}
    await chunks.aclose()  # type: ignore[attr-defined]
    assert (await client.run(argv=["true"])).exit_code == 0  # the connection is fine


async def test_paths_are_validated(client: AgentClient) -> None:
    with pytest.raises(InvalidPath):
        await client.stat("relative/path")
    with pytest.raises(InvalidPath):
        await client.stat("/tmp/nul\0byte")
    with pytest.raises(InvalidPath):
        await client.write_file("relative", b"x")
    with pytest.raises(InvalidPath):
        await client.remove("/", recursive=True)
    # '..' is resolved: /tmp/../etc/hostname is /etc/hostname
    info = await client.stat("/tmp/../etc/hostname")
    assert info["path"] == "/etc/hostname"


async def test_errors_map_to_codes(client: AgentClient, root: Path) -> None:
    (root / "file").write_text("x")
    (root / "dir").mkdir()
    (root / "dir" / "inner").write_text("y")
    with pytest.raises(FileNotFound):
        await client.stat(str(root / "missing"))
    with pytest.raises(FileNotFound):
        await client.read_file(str(root / "missing"))
    with pytest.raises(IsADirectory):
        await client.read_file(str(root / "dir"))
    with pytest.raises(IsADirectory):
        await client.write_file(str(root / "dir"), b"data")
    with pytest.raises(NotADirectory):
        await client.list_dir(str(root / "file"))
    with pytest.raises(NotADirectory):
        await client.write_file(str(root / "file" / "below"), b"x")
    with pytest.raises(FileNotFound):
        await client.write_file(str(root / "nope" / "x"), b"x", make_parents=False)
    with pytest.raises(FileExists):
        await client.mkdir(str(root / "file"))
    with pytest.raises(DirectoryNotEmpty):
        await client.remove(str(root / "dir"))
    with pytest.raises(FilePermissionDenied):
        await client.remove("/proc/version")
    with pytest.raises(FilePermissionDenied):
        await client.mkdir("/sys/atelier-test")
    with pytest.raises(InvalidRequest):
        await client.chmod(str(root / "file"), "rwx")
    os.mkfifo(root / "fifo")
    with pytest.raises(InvalidRequest, match="not a regular file"):
        await client.read_file(str(root / "fifo"))
    os.unlink(root / "fifo")
    long_name = "é" * 120  # 240 bytes: the temp name must still fit in 255
    assert (await client.write_file(str(root / long_name), b"x"))["size"] == 1
    os.unlink(root / long_name)
    assert sorted(os.listdir(root)) == ["dir", "file"]


async def test_list_dir(client: AgentClient, root: Path) -> None:
    (root / "b.txt").write_text("bb")
    (root / "a").mkdir()
    (root / "a" / "inner.txt").write_text("i")
    (root / "a" / "deeper").mkdir()
    (root / "a" / "deeper" / "x").write_text("x")
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (root / "link").symlink_to(outside)

    entries = await client.list_dir(str(root))
    assert [(e["name"], e["type"]) for e in entries] == [
        ("a", "dir"),
        ("b.txt", "file"),
        ("link", "symlink"),
    ]
    link = entries[2]
    assert link["symlink_target"] == str(outside)
    deep = await client.list_dir(str(root), depth=2)
    paths = [e["path"][len(str(root)) :] for e in deep]
    assert paths == ["/a", "/a/deeper", "/a/inner.txt", "/b.txt", "/link"]  # link not followed
    deeper = await client.list_dir(str(root), depth=3)
    assert "/a/deeper/x" in [e["path"][len(str(root)) :] for e in deeper]
    with pytest.raises(InvalidRequest):
        await client.list_dir(str(root), depth=0)


async def test_exists_mkdir_remove_rename_chmod(client: AgentClient, root: Path) -> None:
    assert await client.exists(str(root)) is True
    assert await client.exists(str(root / "nope")) is False
    made = await client.mkdir(str(root / "x" / "y"), mode="0700", user="nobody")
    assert made["created"] is True
    assert made["entry"]["type"] == "dir" and made["entry"]["mode"] == "0700"
    assert made["entry"]["owner"] == "nobody"
    assert (root / "x").stat().st_uid == pwd.getpwnam("nobody").pw_uid  # parents too
    again = await client.mkdir(str(root / "x" / "y"))
    assert again["created"] is False
    with pytest.raises(FileNotFound):
        await client.mkdir(str(root / "p" / "q"), parents=False)

    (root / "x" / "y" / "f").write_text("f")
    moved = await client.rename(str(root / "x" / "y" / "f"), str(root / "g"))
    assert moved["path"] == str(root / "g") and (root / "g").read_text() == "f"
    with pytest.raises(FileNotFound):
        await client.rename(str(root / "missing"), str(root / "h"))

    changed = await client.chmod(str(root / "g"), "0751")
    assert changed["mode"] == "0751" and (root / "g").stat().st_mode & 0o7777 == 0o751
    assert (await client.chmod(str(root / "g"), 0o640))["mode"] == "0640"

    await client.remove(str(root / "g"))
    assert not (root / "g").exists()
    with pytest.raises(DirectoryNotEmpty):
        await client.remove(str(root / "x"))
    await client.remove(str(root / "x"), recursive=True)
    assert not (root / "x").exists()
    (root / "empty").mkdir()
    await client.remove(str(root / "empty"))
    with pytest.raises(FileNotFound):
        await client.remove(str(root / "empty"))


async def test_aborted_write_leaves_nothing(client: AgentClient, root: Path) -> None:
    target = root / "partial.bin"
    target.write_bytes(b"original")

    class Boom(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"z" * 300_000
        raise Boom

    with pytest.raises(Boom):
        await client.write_file(str(target), failing())
    await wait_until(lambda: sorted(os.listdir(root)) == ["partial.bin"], timeout=3)
    assert target.read_bytes() == b"original"  # the old content is intact

    # the same when the whole connection dies mid-upload
    stream_path = root / "fresh.bin"

    async def stalls() -> AsyncIterator[bytes]:
        yield b"q" * 100_000
        await asyncio.sleep(30)

    upload = asyncio.create_task(client.write_file(str(stream_path), stalls()))

    def temp_present() -> bool:
        return any(name.endswith(".tmp") for name in os.listdir(root))

    await wait_until(temp_present, timeout=3)
    await client.close()  # the agent sees the connection go away mid-upload
    await wait_until(lambda: sorted(os.listdir(root)) == ["partial.bin"], timeout=3)
    upload.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await upload
