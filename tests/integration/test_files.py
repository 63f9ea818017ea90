"""Files through the SDK against real gVisor sandboxes."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from atelier import Sandbox
from atelier.errors import (
    DirectoryNotEmpty,
    FileNotFound,
    InvalidPath,
    IsADirectory,
    NotADirectory,
)

pytestmark = pytest.mark.integration


def test_write_read_binary_round_trip(sb: Sandbox) -> None:
    data = bytes(range(256)) * 100
    info = sb.files.write("/home/user/bin.dat", data)
    assert info.size == len(data) and info.owner == "user"
    assert sb.files.read("/home/user/bin.dat") == data


def test_write_creates_parents_and_sets_mode(sb: Sandbox) -> None:
    info = sb.files.write("/home/user/deep/er/x.sh", "#!/bin/sh\necho run\n", mode="0755")
    assert info.mode == "0755"
    assert sb.commands.run("/home/user/deep/er/x.sh").stdout == "run\n"


def test_large_file_streams_both_ways(sb: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as fh:
        for _ in range(64):
            fh.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    sb.files.upload(src, "/home/user/big.bin")
    inside = sb.commands.run("sha256sum /home/user/big.bin").stdout.split()[0]
    assert inside == digest
    back = tmp_path / "back.bin"
    sb.files.download("/home/user/big.bin", back)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


def test_list_stat_exists_mkdir_rename_chmod_remove(sb: Sandbox) -> None:
    assert sb.files.make_dir("/home/user/proj/src") is True
    assert sb.files.make_dir("/home/user/proj/src") is False
    sb.files.write("/home/user/proj/src/main.py", "print(1)\n")
    sb.files.write("/home/user/proj/README", "hi\n")
    names = {e.name: e.type for e in sb.files.list("/home/user/proj")}
    assert names == {"src": "dir", "README": "file"}
    deep = {e.path for e in sb.files.list("/home/user/proj", depth=2)}
    assert "/home/user/proj/src/main.py" in deep
    assert sb.files.stat("/home/user/proj/README").size == 3
    assert sb.files.exists("/home/user/proj/README")
    assert not sb.files.exists("/home/user/proj/nope")
    moved = sb.files.rename("/home/user/proj/README", "/home/user/proj/README.md")
    assert moved.path == "/home/user/proj/README.md"
    assert sb.files.chmod("/home/user/proj/README.md", "0600").mode == "0600"
    with pytest.raises(DirectoryNotEmpty):
        sb.files.remove("/home/user/proj")
    sb.files.remove("/home/user/proj", recursive=True)
    assert not sb.files.exists("/home/user/proj")


def test_precise_errors(sb: Sandbox) -> None:
    with pytest.raises(FileNotFound):
        sb.files.read("/home/user/missing.txt")
    with pytest.raises(IsADirectory):
        sb.files.read("/home/user")
    sb.files.write("/home/user/plain", "x")
    with pytest.raises(NotADirectory):
        sb.files.list("/home/user/plain")
    with pytest.raises(InvalidPath):
        sb.files.read("relative/path")


def test_dotdot_stays_inside_the_sandbox(sb: Sandbox) -> None:
    # ".." above / is / itself: the sandbox's own hostname, never the host's
    assert sb.files.read_text("/../../../etc/hostname").strip() == sb.id


def test_watch_reports_changes(sb: Sandbox) -> None:
    sb.files.make_dir("/home/user/watched")
    events = []
    with sb.files.watch("/home/user/watched") as stream:

        def change() -> None:
            time.sleep(0.5)
            sb.files.write("/home/user/watched/new.txt", "1")
            sb.files.remove("/home/user/watched/new.txt")

        t = threading.Thread(target=change)
        t.start()
        for ev in stream:
            events.append((ev.type, ev.path))
            if ev.type == "delete":
                break
        t.join()
    # the agent's atomic write (temp file + rename) is reported as one create
    assert events == [
        ("create", "/home/user/watched/new.txt"),
        ("delete", "/home/user/watched/new.txt"),
    ]
