"""The SFTP server's mapping onto agent file operations, against an in-memory fake agent."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import asyncssh
import pytest
from asyncssh import SFTPAttrs
from test_ssh_gateway_keys import sandbox_record

from atelier.core.agent_client import CommandResult, FileInfo
from atelier.core.models import SandboxRecord
from atelier.errors import DirectoryNotEmpty, FileExists, FileNotFound, FilePermissionDenied
from atelier.sshgw.sftp import AgentSFTPServer, sftp_error

HOME = "/home/user"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC).isoformat().replace("+00:00", "Z")


class FakeAgent:
    """Files and directories in dicts; records the calls."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {f"{HOME}/a.txt": b"hello world"}
        self.modes: dict[str, int] = {f"{HOME}/a.txt": 0o640}
        self.dirs: set[str] = {"/", "/home", HOME}
        self.links: dict[str, str] = {f"{HOME}/link": "a.txt"}
        self.reads = 0
        self.calls: list[tuple[Any, ...]] = []

    def _info(self, path: str) -> FileInfo:
        name = path.rsplit("/", 1)[-1] or "/"
        if path in self.links:
            kind, size, mode, target = "symlink", 5, 0o777, self.links[path]
        elif path in self.dirs:
            kind, size, mode, target = "dir", 4096, 0o755, None
        elif path in self.files:
            kind, size, mode, target = (
                "file",
                len(self.files[path]),
                self.modes.get(path, 0o644),
                None,
            )
        else:
            raise FileNotFound(f"{path} does not exist")
        return FileInfo(
            name=name, path=path, type=kind, size=size, mode=f"{mode:04o}",  # type: ignore[typeddict-item]
            owner="user", group="user", modified_at=NOW, symlink_target=target,
        )  # fmt: skip

    async def stat(self, path: str) -> FileInfo:
        return self._info(path)

    async def exists(self, path: str) -> bool:
        return path in self.files or path in self.dirs or path in self.links

    async def list_dir(self, path: str, depth: int = 1) -> list[FileInfo]:
        children = {
            p for p in [*self.files, *self.dirs, *self.links] if p.rsplit("/", 1)[0] == path
        }
        return [self._info(p) for p in sorted(children - {path})]

    async def read_file(self, path: str) -> tuple[int, AsyncIterator[bytes]]:
        data = self.files[path] if path in self.files else self._info(path) and b""
        self.reads += 1

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 4):
                yield data[i : i + 4]

        return len(data), chunks()

    async def write_file(
        self, path: str, chunks: AsyncIterator[bytes] | Iterable[bytes], *, mode: str, user: Any
    ) -> FileInfo:
        if path.rsplit("/", 1)[0] not in self.dirs:
            raise FileNotFound(f"no directory for {path}")
        if path.startswith("/root/"):
            raise FilePermissionDenied(f"{path}: permission denied")
        parts = [c async for c in chunks] if hasattr(chunks, "__aiter__") else list(chunks)  # type: ignore[union-attr]
        self.files[path] = b"".join(parts)
        self.modes[path] = int(mode, 8)
        self.calls.append(("write", path, mode))
        return self._info(path)

    async def mkdir(self, path: str, *, parents: bool, mode: str, user: Any) -> dict[str, Any]:
        self.dirs.add(path)
        self.calls.append(("mkdir", path, parents, mode))
        return {"created": True, "entry": self._info(path)}

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        if path in self.dirs:
            if any(p.startswith(path + "/") for p in [*self.files, *self.dirs]):
                raise DirectoryNotEmpty(f"{path} is not empty")
            self.dirs.discard(path)
        elif self.files.pop(path, None) is None:
            raise FileNotFound(f"{path} does not exist")

    async def rename(self, source: str, destination: str) -> FileInfo:
        self.files[destination] = self.files.pop(source)
        return self._info(destination)

    async def chmod(self, path: str, mode: int | str) -> FileInfo:
        self.modes[path] = int(mode, 8) if isinstance(mode, str) else mode
        return self._info(path)

    async def run(self, *, argv: list[str], user: Any) -> CommandResult:
        assert argv == ["pwd"]
        return CommandResult(1, 0, None, False, f"{HOME}\n".encode(), b"")


class FakeAccess:
    def __init__(self, agent: FakeAgent) -> None:
        self.fake = agent

    async def agent(self) -> tuple[SandboxRecord, Any]:
        return sandbox_record("sb-1"), self.fake


class FakeChan:
    def __init__(self) -> None:
        self.closing = False
        self.exit_status: int | None = None

    def is_closing(self) -> bool:
        return self.closing

    def exit(self, status: int) -> None:
        self.exit_status = status


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def chan() -> FakeChan:
    return FakeChan()


@pytest.fixture
def sftp(agent: FakeAgent, chan: FakeChan) -> AgentSFTPServer:
    return AgentSFTPServer(chan, FakeAccess(agent))


async def test_paths_are_relative_to_home(sftp: AgentSFTPServer) -> None:
    assert await sftp.realpath(b".") == HOME.encode()
    assert await sftp.realpath(b"x/../y") == f"{HOME}/y".encode()
    assert await sftp.realpath(b"/etc/../tmp") == b"/tmp"
    assert await sftp.realpath(b"//a") == b"/a"


async def test_stat_maps_type_mode_size_and_time(sftp: AgentSFTPServer) -> None:
    attrs = await sftp.stat(b"a.txt")
    assert attrs.permissions == stat.S_IFREG | 0o640
    assert attrs.size == 11
    assert attrs.mtime == int(datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp())
    assert stat.S_ISDIR((await sftp.stat(b"/home")).permissions or 0)
    assert stat.S_ISLNK((await sftp.lstat(b"link")).permissions or 0)
    assert stat.S_ISREG((await sftp.stat(b"link")).permissions or 0)  # followed
    assert await sftp.readlink(b"link") == b"a.txt"
    with pytest.raises(asyncssh.SFTPNoSuchFile):
        await sftp.stat(b"missing")


async def test_listing_has_dot_entries_and_long_names(sftp: AgentSFTPServer) -> None:
    names = [n async for n in sftp.scandir(HOME.encode())]
    assert [n.filename for n in names] == [b".", b"..", b"a.txt", b"link"]
    long_a = names[2].longname
    assert isinstance(long_a, bytes)
    assert long_a.startswith(b"-rw-r----- ") and b" user " in long_a and long_a.endswith(b"a.txt")
    with pytest.raises(asyncssh.SFTPNotADirectory):
        [n async for n in sftp.scandir(b"a.txt")]


async def test_reads_stream_in_order_and_restart_when_going_back(
    sftp: AgentSFTPServer, agent: FakeAgent
) -> None:
    handle = await sftp.open(b"a.txt", asyncssh.FXF_READ, SFTPAttrs())
    assert await sftp.read(handle, 0, 5) == b"hello"
    assert await sftp.read(handle, 6, 100) == b"world"  # a skip forward
    assert await sftp.read(handle, 11, 10) == b""  # EOF
    assert agent.reads == 1
    assert await sftp.read(handle, 2, 3) == b"llo"  # backwards: a new stream
    assert agent.reads == 2
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await sftp.write(handle, 0, b"x")
    await sftp.close(handle)
    with pytest.raises(asyncssh.SFTPNoSuchFile):
        await sftp.open(b"nope", asyncssh.FXF_READ, SFTPAttrs())
    with pytest.raises(asyncssh.SFTPFileIsADirectory):
        await sftp.open(b"/home", asyncssh.FXF_READ, SFTPAttrs())


async def test_truncating_writes_stream_and_land_on_close(
    sftp: AgentSFTPServer, agent: FakeAgent
) -> None:
    flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
    handle = await sftp.open(b"new.bin", flags, SFTPAttrs(permissions=0o600))
    await sftp.write(handle, 0, b"abc")
    await sftp.write(handle, 5, b"def")  # a hole reads back as zeros
    with pytest.raises(asyncssh.SFTPOpUnsupported):
        await sftp.write(handle, 1, b"x")
    assert (await sftp.fstat(handle)).size == 8
    await sftp.fsetstat(handle, SFTPAttrs(permissions=0o755))
    await sftp.close(handle)
    assert agent.files[f"{HOME}/new.bin"] == b"abc\0\0def"
    assert agent.modes[f"{HOME}/new.bin"] == 0o755
    assert ("write", f"{HOME}/new.bin", "0600") in agent.calls


async def test_writes_without_truncate_edit_a_copy(sftp: AgentSFTPServer, agent: FakeAgent) -> None:
    handle = await sftp.open(b"a.txt", asyncssh.FXF_WRITE | asyncssh.FXF_READ, SFTPAttrs())
    await sftp.write(handle, 6, b"WORLD")
    await sftp.write(handle, 0, b"H")
    assert await sftp.read(handle, 0, 5) == b"Hello"
    await sftp.close(handle)
    assert agent.files[f"{HOME}/a.txt"] == b"Hello WORLD"
    assert agent.modes[f"{HOME}/a.txt"] == 0o640  # the mode is kept


async def test_open_flags(sftp: AgentSFTPServer) -> None:
    with pytest.raises(asyncssh.SFTPFileAlreadyExists):
        await sftp.open(
            b"a.txt", asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL, SFTPAttrs()
        )
    with pytest.raises(asyncssh.SFTPNoSuchFile):
        await sftp.open(b"nope", asyncssh.FXF_WRITE, SFTPAttrs())


async def test_failed_upload_reports_the_agent_error(
    sftp: AgentSFTPServer, agent: FakeAgent
) -> None:
    agent.dirs.add("/root")
    flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
    handle = await sftp.open(b"/root/x", flags, SFTPAttrs())
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        # the agent refuses once it starts; a write or the close reports it
        for i in range(100):
            await sftp.write(handle, i * 3, b"abc")
        await sftp.close(handle)


async def test_lost_channel_aborts_uploads(
    sftp: AgentSFTPServer, agent: FakeAgent, chan: FakeChan
) -> None:
    flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
    handle = await sftp.open(b"partial", flags, SFTPAttrs())
    await sftp.write(handle, 0, b"half")
    chan.closing = True  # asyncssh closes open files when the client goes away
    await sftp.close(handle)
    assert f"{HOME}/partial" not in agent.files
    await sftp.exit()
    assert chan.exit_status == 0  # sftp/scp need an exit status


async def test_directory_and_rename_operations(sftp: AgentSFTPServer, agent: FakeAgent) -> None:
    await sftp.mkdir(b"d", SFTPAttrs(permissions=0o700))
    assert ("mkdir", f"{HOME}/d", False, "0700") in agent.calls
    with pytest.raises(asyncssh.SFTPFileAlreadyExists):
        await sftp.mkdir(b"d", SFTPAttrs())
    agent.files[f"{HOME}/d/f"] = b"1"
    with pytest.raises(asyncssh.SFTPDirNotEmpty):
        await sftp.rmdir(b"d")
    with pytest.raises(asyncssh.SFTPFileIsADirectory):
        await sftp.remove(b"d")
    with pytest.raises(asyncssh.SFTPNotADirectory):
        await sftp.rmdir(b"d/f")
    await sftp.remove(b"d/f")
    await sftp.rmdir(b"d")
    assert f"{HOME}/d" not in agent.dirs
    agent.files[f"{HOME}/b.txt"] = b"b"
    with pytest.raises(asyncssh.SFTPFileAlreadyExists):
        await sftp.rename(b"a.txt", b"b.txt")  # v3 rename never replaces
    await sftp.posix_rename(b"a.txt", b"b.txt")  # posix-rename does
    assert agent.files[f"{HOME}/b.txt"] == b"hello world"
    await sftp.setstat(b"b.txt", SFTPAttrs(permissions=stat.S_IFREG | 0o600))
    assert agent.modes[f"{HOME}/b.txt"] == 0o600
    with pytest.raises(asyncssh.SFTPOpUnsupported):
        await sftp.symlink(b"b.txt", b"l2")


def test_error_mapping() -> None:
    assert isinstance(sftp_error(FileNotFound("x")), asyncssh.SFTPNoSuchFile)
    assert isinstance(sftp_error(FilePermissionDenied("x")), asyncssh.SFTPPermissionDenied)
    assert isinstance(sftp_error(FileExists("x")), asyncssh.SFTPFileAlreadyExists)
    assert isinstance(sftp_error(DirectoryNotEmpty("x")), asyncssh.SFTPDirNotEmpty)
