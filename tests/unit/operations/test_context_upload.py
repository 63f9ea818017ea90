"""Build context archives: what is unpacked and what is refused."""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atelier.errors import InvalidRequest
from atelier.operations.upload import extract_context, receive_upload


def _tar(path: Path, members: list[tuple[str, str, str]], *, gz: bool = False) -> Path:
    """members: (name, type, content-or-linkname) with type file/dir/sym/hard/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                raw = data.encode()
                info.size, info.mode = len(raw), 0o4755
                tar.addfile(info, io.BytesIO(raw))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = data
            info.mode = 0o755
            tar.addfile(info)
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def test_plain_and_gzip_contexts_unpack(tmp_path: Path) -> None:
    members = [
        ("./Dockerfile", "file", "FROM base\n"),
        ("app", "dir", ""),
        ("app/a.txt", "file", "a"),
        ("app/link", "sym", "a.txt"),
        ("app/hard", "hard", "app/a.txt"),
    ]
    for gz in (False, True):
        dest = tmp_path / f"ctx-{gz}"
        dest.mkdir()
        count = extract_context(_tar(tmp_path / f"c-{gz}.tar", members, gz=gz), dest)
        assert count == 5
        assert (dest / "Dockerfile").read_text() == "FROM base\n"
        assert (dest / "app/link").is_symlink() and (dest / "app/link").read_text() == "a"
        assert (dest / "app/hard").read_text() == "a"
        assert (dest / "app/a.txt").stat().st_mode & 0o7777 == 0o755  # setuid dropped


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("/etc/passwd", "file", "x")], "absolute"),
        ([("a/../../x", "file", "x")], "leaves the context"),
        ([("out", "sym", "/etc"), ("out/passwd", "file", "x")], "below the symlink"),
        ([("h", "hard", "/etc/passwd")], "absolute"),
        ([("h", "hard", "missing")], "hard link"),
        ([("p", "fifo", "")], "special file"),
        ([("a", "file", "1"), ("a", "file", "2")], "duplicate"),
    ],
)
def test_unsafe_archives_are_refused(
    tmp_path: Path, members: list[tuple[str, str, str]], message: str
) -> None:
    dest = tmp_path / "ctx"
    dest.mkdir()
    with pytest.raises(InvalidRequest, match=message):
        extract_context(_tar(tmp_path / "c.tar", members), dest)
    assert not (tmp_path / "passwd").exists()


def test_limits(tmp_path: Path) -> None:
    dest = tmp_path / "ctx"
    dest.mkdir()
    archive = _tar(tmp_path / "c.tar", [("big", "file", "x" * 5000)])
    with pytest.raises(InvalidRequest, match="too large"):
        extract_context(archive, dest, max_bytes=1000)
    many = _tar(tmp_path / "m.tar", [(f"f{i}", "file", "") for i in range(5)])
    with pytest.raises(InvalidRequest, match="more than 3 members"):
        extract_context(many, tmp_path / "ctx", max_members=3)
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidRequest, match="not a tar archive"):
        extract_context(tmp_path / "junk.tar", dest)


def test_upload_size_limit(tmp_path: Path) -> None:
    async def body(n: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"x" * 100

    assert asyncio.run(receive_upload(body(3), tmp_path / "ok", limit=1000)) == 300
    with pytest.raises(InvalidRequest, match="too large"):
        asyncio.run(receive_upload(body(20), tmp_path / "big", limit=1000))
    with pytest.raises(InvalidRequest, match="empty"):
        asyncio.run(receive_upload(body(0), tmp_path / "none", limit=1000))
