"""SFTP (and so ``scp``, which speaks SFTP in OpenSSH 9) backed by the agent's file ops.

Paths are the sandbox's; relative ones are relative to the login user's home
(or a workspace's folder). File operations run as the agent (root), files it
creates are owned by the sandbox's default user, as with the files API.

The agent streams whole files, so open files are sequential streams:

* reading: one ``fs.read`` stream served in order; a read behind the current
  position restarts the stream (rare: OpenSSH reads in order).
* writing with ``O_TRUNC`` or a new file: one ``fs.write`` stream fed in order
  (the agent replaces the file atomically when the handle is closed); a gap
  is filled with zeros, a write behind the current position is refused.
* writing an existing file without ``O_TRUNC`` (append, resume): the file is
  copied to a host temporary file, changed there and written back on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import stat as stat_mod
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import IO, Any, Protocol

import asyncssh
from asyncssh import SFTPAttrs, SFTPName

from ..core.agent_client import AgentClient, FileInfo
from ..core.models import SandboxRecord
from ..errors import (
    AtelierError,
    DirectoryNotEmpty,
    FileExists,
    FileNotFound,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    PermissionDenied,
)

__all__ = ["AgentSFTPServer", "attrs_from_info", "sftp_error"]

log = logging.getLogger("atelier.sshgw")

_TYPE_BITS = {
    "file": stat_mod.S_IFREG,
    "dir": stat_mod.S_IFDIR,
    "symlink": stat_mod.S_IFLNK,
    "other": 0,
}
_SFTP_TYPES = {
    "file": asyncssh.FILEXFER_TYPE_REGULAR,
    "dir": asyncssh.FILEXFER_TYPE_DIRECTORY,
    "symlink": asyncssh.FILEXFER_TYPE_SYMLINK,
    "other": asyncssh.FILEXFER_TYPE_SPECIAL,
}
_MAX_SYMLINKS = 16
_ZEROS = bytes(64 * 1024)


class AgentAccess(Protocol):
    async def agent(self) -> tuple[SandboxRecord, AgentClient]: ...


def sftp_error(exc: AtelierError) -> asyncssh.SFTPError:
    """The SFTP status for an agent error (SFTP v3 clients see most as "failure")."""
    message = exc.message
    if isinstance(exc, FileNotFound):
        return asyncssh.SFTPNoSuchFile(message)
    if isinstance(exc, PermissionDenied):
        return asyncssh.SFTPPermissionDenied(message)
    if isinstance(exc, FileExists):
        return asyncssh.SFTPFileAlreadyExists(message)
    if isinstance(exc, IsADirectory):
        return asyncssh.SFTPFileIsADirectory(message)
    if isinstance(exc, NotADirectory):
        return asyncssh.SFTPNotADirectory(message)
    if isinstance(exc, DirectoryNotEmpty):
        return asyncssh.SFTPDirNotEmpty(message)
    if isinstance(exc, InvalidPath):
        return asyncssh.SFTPInvalidFilename(message)
    return asyncssh.SFTPFailure(message)


@contextlib.contextmanager
def _mapped() -> Any:
    try:
        yield
    except AtelierError as exc:
        raise sftp_error(exc) from None


def _mtime(info: FileInfo) -> int | None:
    try:
        return int(datetime.fromisoformat(info["modified_at"].replace("Z", "+00:00")).timestamp())
    except (KeyError, ValueError, AttributeError):
        return None


def attrs_from_info(info: FileInfo) -> SFTPAttrs:
    mtime = _mtime(info)
    return SFTPAttrs(
        type=_SFTP_TYPES.get(info["type"], asyncssh.FILEXFER_TYPE_UNKNOWN),
        size=info["size"],
        permissions=int(info["mode"], 8) | _TYPE_BITS.get(info["type"], 0),
        atime=mtime,
        mtime=mtime,
        nlink=1,
    )


def _longname(name: str, info: FileInfo) -> str:
    attrs = attrs_from_info(info)
    mode = stat_mod.filemode(attrs.permissions or 0)
    mtime = attrs.mtime or 0
    when = time.localtime(mtime)
    recent = time.time() - 182 * 24 * 3600 < mtime <= time.time()
    stamp = time.strftime("%b %d %H:%M" if recent else "%b %d  %Y", when)
    return (
        f"{mode} {1:>4} {info['owner'][:8]:8} {info['group'][:8]:8} "
        f"{info['size']:>8} {stamp} {name}"
    )


class _ReadHandle:
    def __init__(self, agent: AgentClient, path: str, size: int) -> None:
        self.agent = agent
        self.path = path
        self.size = size
        self._chunks: AsyncIterator[bytes] | None = None
        self._pos = 0  # offset of _buf[0]
        self._buf = bytearray()
        self._eof = False

    async def _restart(self) -> None:
        await self.aclose()
        self.size, self._chunks = await self.agent.read_file(self.path)
        self._pos, self._buf, self._eof = 0, bytearray(), False

    async def _fill(self, end: int) -> None:
        """Buffer the stream up to offset ``end`` (or its end)."""
        while not self._eof and self._pos + len(self._buf) < end:
            assert self._chunks is not None
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._eof = True
                break
            self._buf += chunk

    async def read(self, offset: int, size: int) -> bytes:
        if self._chunks is None or offset < self._pos:
            await self._restart()
        if offset > self._pos:  # skip ahead, keeping nothing behind the offset
            await self._fill(offset)
            drop = min(offset - self._pos, len(self._buf))
            del self._buf[:drop]
            self._pos += drop
            if offset > self._pos:
                return b""
        await self._fill(offset + size)
        data = bytes(self._buf[:size])
        del self._buf[: len(data)]
        self._pos += len(data)
        return data

    async def aclose(self) -> None:
        if self._chunks is not None:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            self._chunks = None


class _StreamWriteHandle:
    """Writes in offset order, streamed to ``fs.write`` as they come."""

    def __init__(self, agent: AgentClient, path: str, mode: int, user: str | None) -> None:
        self.agent = agent
        self.path = path
        self.mode = self._initial_mode = mode
        self.written = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
        self._task = asyncio.get_running_loop().create_task(
            agent.write_file(path, self._chunks(), mode=f"{mode:04o}", user=user)
        )

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    async def _put(self, item: bytes | None) -> None:
        put = asyncio.get_running_loop().create_task(self._queue.put(item))
        done, _ = await asyncio.wait([put, self._task], return_when=asyncio.FIRST_COMPLETED)
        if put not in done:  # the upload ended (failed) before taking the data
            put.cancel()
            await self._result()
            raise asyncssh.SFTPFailure(f"the write of {self.path} ended early")

    async def _result(self) -> FileInfo:
        with _mapped():
            return await self._task

    async def write(self, offset: int, data: bytes) -> int:
        if offset < self.written:
            raise asyncssh.SFTPOpUnsupported(
                "the SSH gateway writes files in order; this write goes back to "
                f"offset {offset} after {self.written} bytes"
            )
        while offset > self.written:  # a hole: zeros, as a sparse write would read back
            gap = _ZEROS[: min(len(_ZEROS), offset - self.written)]
            await self._put(gap)
            self.written += len(gap)
        if data:
            await self._put(data)
            self.written += len(data)
        return len(data)

    async def close(self) -> FileInfo:
        if not self._task.done():
            await self._put(None)
        info = await self._result()
        if self.mode != self._initial_mode:  # an fsetstat while writing
            with _mapped():
                info = await self.agent.chmod(self.path, f"{self.mode:04o}")
        return info

    async def abort(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


class _SpoolWriteHandle:
    """Random-access changes to an existing file: a host temporary copy, written back on close."""

    def __init__(self, agent: AgentClient, path: str, mode: int, user: str | None) -> None:
        self.agent = agent
        self.path = path
        self.mode = mode
        self.user = user
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix="atelier-sftp-")  # noqa: SIM115

    async def load(self) -> None:
        with _mapped():
            _, chunks = await self.agent.read_file(self.path)
            async for chunk in chunks:
                self.file.write(chunk)

    @property
    def written(self) -> int:
        self.file.seek(0, 2)
        return self.file.tell()

    async def read(self, offset: int, size: int) -> bytes:
        self.file.seek(offset)
        return self.file.read(size)

    async def write(self, offset: int, data: bytes) -> int:
        self.file.seek(offset)
        self.file.write(data)
        return len(data)

    def truncate(self, size: int) -> None:
        self.file.truncate(size)

    async def close(self) -> FileInfo:
        def chunks() -> Any:
            self.file.seek(0)
            while block := self.file.read(256 * 1024):
                yield block

        try:
            with _mapped():
                return await self.agent.write_file(
                    self.path, chunks(), mode=f"{self.mode:04o}", user=self.user
                )
        finally:
            self.file.close()

    async def abort(self) -> None:
        self.file.close()


_Handle = _ReadHandle | _StreamWriteHandle | _SpoolWriteHandle


class AgentSFTPServer(asyncssh.SFTPServer):
    """One SFTP session on one sandbox."""

    def __init__(self, chan: Any, access: AgentAccess) -> None:
        super().__init__(chan)
        self._access = access
        self._home: str | None = None
        self._handles: set[_Handle] = set()

    # -- helpers -----------------------------------------------------------------
    async def _agent(self) -> tuple[SandboxRecord, AgentClient]:
        with _mapped():
            return await self._access.agent()

    async def _home_dir(self) -> str:
        if self._home is None:
            rec, agent = await self._agent()
            home = rec.default_cwd
            if home is None:
                with _mapped():
                    result = await agent.run(argv=["pwd"], user=rec.default_user)
                home = result.stdout.decode(errors="replace").strip() or "/"
            self._home = home
        return self._home

    async def _path(self, path: bytes) -> str:
        text = path.decode("utf-8", errors="surrogateescape")
        if "\0" in text:
            raise asyncssh.SFTPInvalidFilename("a path may not contain NUL")
        if not text.startswith("/"):
            text = posixpath.join(await self._home_dir(), text)
        text = posixpath.normpath(text)
        return "/" + text.lstrip("/")

    async def _stat(self, path: str, follow: bool) -> FileInfo:
        _, agent = await self._agent()
        with _mapped():
            info = await agent.stat(path)
            hops = 0
            while follow and info["type"] == "symlink" and info["symlink_target"]:
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise asyncssh.SFTPLinkLoop(f"too many symbolic links at {path}")
                path = posixpath.normpath(
                    posixpath.join(posixpath.dirname(path), info["symlink_target"])
                )
                info = await agent.stat(path)
            return info

    # -- paths and metadata ----------------------------------------------------------
    async def realpath(self, path: bytes) -> bytes:
        return (await self._path(path)).encode("utf-8", errors="surrogateescape")

    async def stat(self, path: bytes) -> SFTPAttrs:
        return attrs_from_info(await self._stat(await self._path(path), follow=True))

    async def lstat(self, path: bytes) -> SFTPAttrs:
        return attrs_from_info(await self._stat(await self._path(path), follow=False))

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        handle = self._handle(file_obj)
        if isinstance(handle, _ReadHandle):
            return attrs_from_info(await self._stat(handle.path, follow=True))
        return SFTPAttrs(
            type=asyncssh.FILEXFER_TYPE_REGULAR,
            size=handle.written,
            permissions=stat_mod.S_IFREG | 0o644,
        )

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        target = await self._path(path)
        if attrs.permissions is not None:
            _, agent = await self._agent()
            with _mapped():
                await agent.chmod(target, stat_mod.S_IMODE(attrs.permissions))
        # sizes, owners and times are not settable through the agent: ignored

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        handle = self._handle(file_obj)
        if isinstance(handle, _StreamWriteHandle | _SpoolWriteHandle):
            if attrs.permissions is not None:
                handle.mode = stat_mod.S_IMODE(attrs.permissions)
            if attrs.size is not None and isinstance(handle, _SpoolWriteHandle):
                handle.truncate(attrs.size)
            return
        await self.setstat(handle.path.encode("utf-8", errors="surrogateescape"), attrs)

    async def readlink(self, path: bytes) -> bytes:
        info = await self._stat(await self._path(path), follow=False)
        if info["type"] != "symlink" or not info["symlink_target"]:
            raise asyncssh.SFTPInvalidParameter(f"{info['path']} is not a symbolic link")
        return info["symlink_target"].encode("utf-8", errors="surrogateescape")

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        directory = await self._path(path)
        _, agent = await self._agent()
        with _mapped():
            here = await agent.stat(directory)
            if here["type"] != "dir":
                raise NotADirectory(f"{directory} is not a directory")
            entries = await agent.list_dir(directory, depth=1)
        parent = here
        if directory != "/":
            with contextlib.suppress(AtelierError):
                parent = await agent.stat(posixpath.dirname(directory))
        for name, info in ((".", here), ("..", parent)):
            yield SFTPName(name.encode(), _longname(name, info).encode(), attrs_from_info(info))
        for info in entries:
            name = info["name"]
            yield SFTPName(
                name.encode("utf-8", errors="surrogateescape"),
                _longname(name, info).encode("utf-8", errors="surrogateescape"),
                attrs_from_info(info),
            )

    # -- changes -------------------------------------------------------------------------
    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        target = await self._path(path)
        rec, agent = await self._agent()
        mode = stat_mod.S_IMODE(attrs.permissions) if attrs.permissions is not None else 0o755
        with _mapped():
            if await agent.exists(target):
                raise FileExists(f"{target} exists")
            await agent.mkdir(target, parents=False, mode=f"{mode:04o}", user=rec.default_user)

    async def rmdir(self, path: bytes) -> None:
        target = await self._path(path)
        info = await self._stat(target, follow=False)
        if info["type"] != "dir":
            raise asyncssh.SFTPNotADirectory(f"{target} is not a directory")
        _, agent = await self._agent()
        with _mapped():
            await agent.remove(target, recursive=False)

    async def remove(self, path: bytes) -> None:
        target = await self._path(path)
        info = await self._stat(target, follow=False)
        if info["type"] == "dir":
            raise asyncssh.SFTPFileIsADirectory(f"{target} is a directory (use rmdir)")
        _, agent = await self._agent()
        with _mapped():
            await agent.remove(target, recursive=False)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        """SFTP v3 rename: refuses to replace an existing target."""
        source, target = await self._path(oldpath), await self._path(newpath)
        _, agent = await self._agent()
        with _mapped():
            if await agent.exists(target):
                raise FileExists(f"{target} exists")
            await agent.rename(source, target)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        source, target = await self._path(oldpath), await self._path(newpath)
        _, agent = await self._agent()
        with _mapped():
            await agent.rename(source, target)

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("symbolic links cannot be made over SFTP here")

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("hard links cannot be made over SFTP here")

    # -- files ---------------------------------------------------------------------------
    def _handle(self, file_obj: object) -> _Handle:
        if file_obj not in self._handles:
            raise asyncssh.SFTPInvalidHandle("no such open file")
        return file_obj

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        target = await self._path(path)
        rec, agent = await self._agent()
        writing = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND))
        info: FileInfo | None = None
        with _mapped():
            try:
                info = await self._stat(target, follow=True)
            except asyncssh.SFTPNoSuchFile:
                info = None
        if info is not None and info["type"] == "dir":
            raise asyncssh.SFTPFileIsADirectory(f"{target} is a directory")
        handle: _Handle
        if not writing:
            if info is None:
                raise asyncssh.SFTPNoSuchFile(f"{target} does not exist")
            handle = _ReadHandle(agent, target, info["size"])
            with _mapped():
                await handle.read(0, 0)  # opens the stream: errors show at open time
        else:
            if info is None and not pflags & asyncssh.FXF_CREAT:
                raise asyncssh.SFTPNoSuchFile(f"{target} does not exist")
            if info is not None and pflags & asyncssh.FXF_EXCL:
                raise asyncssh.SFTPFileAlreadyExists(f"{target} exists")
            if attrs.permissions is not None:
                mode = stat_mod.S_IMODE(attrs.permissions)
            elif info is not None:
                mode = int(info["mode"], 8)
            else:
                mode = 0o644
            if info is None or pflags & asyncssh.FXF_TRUNC:
                handle = _StreamWriteHandle(agent, target, mode, rec.default_user)
            else:
                handle = _SpoolWriteHandle(agent, target, mode, rec.default_user)
                try:
                    await handle.load()
                except BaseException:
                    await handle.abort()
                    raise
        self._handles.add(handle)
        return handle

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        handle = self._handle(file_obj)
        if isinstance(handle, _StreamWriteHandle):
            raise asyncssh.SFTPPermissionDenied("this file is open for writing only")
        with _mapped():
            return await handle.read(offset, size)

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        handle = self._handle(file_obj)
        if isinstance(handle, _ReadHandle):
            raise asyncssh.SFTPPermissionDenied("this file is open for reading only")
        return await handle.write(offset, data)

    async def close(self, file_obj: object) -> None:
        handle = self._handle(file_obj)
        self._handles.discard(handle)
        if isinstance(handle, _ReadHandle):
            await handle.aclose()
        elif self._lost():
            await handle.abort()  # the client went away mid-upload: keep the old file
        else:
            await handle.close()

    def _lost(self) -> bool:
        """Whether the channel is going away (asyncssh then closes every open file)."""
        is_closing = getattr(self._chan, "is_closing", None)
        return bool(is_closing()) if callable(is_closing) else False

    async def exit(self) -> None:
        for handle in list(self._handles):
            with contextlib.suppress(Exception):
                if isinstance(handle, _ReadHandle):
                    await handle.aclose()
                else:
                    await handle.abort()
        self._handles.clear()
        # OpenSSH's sftp-server exits 0 when the client ends the session; scp and
        # sftp treat a channel closed without an exit status as a failure (exit 1)
        exit_ = getattr(self._chan, "exit", None)
        if callable(exit_):
            with contextlib.suppress(Exception):
                exit_(0)
