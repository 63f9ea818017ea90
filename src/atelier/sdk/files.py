"""``sandbox.files``: the sandbox's filesystem (absolute paths inside the sandbox).

Reads and writes are streamed: ``read_stream``/``download`` never hold a whole
file in memory, and ``write`` streams file objects and iterators chunk by chunk.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from atelier.sdk import _api as api
from atelier.sdk._http import (
    AsyncHttp,
    AsyncResponseStream,
    AsyncUploadData,
    ResponseStream,
    SyncHttp,
    UploadData,
    async_body,
    sync_body,
)
from atelier.sdk.models import FileEvent, FileInfo

__all__ = ["AsyncFiles", "Files"]

StrPath = str | os.PathLike[str]


@contextlib.contextmanager
def _atomic_local(local_path: StrPath) -> Iterator[BinaryIO]:
    """A new file beside ``local_path`` (umask applies), renamed over it on success."""
    target = Path(local_path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "xb") as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Files:
    """Files of one sandbox (``sandbox.files``)."""

    def __init__(self, http: SyncHttp, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    def read_stream(self, path: str) -> ResponseStream[bytes]:
        """The file's bytes as they arrive; ``with`` it or ``close()`` it to stop early."""
        return self._http.stream(api.read_file(self._sandbox_id, path))

    def read(self, path: str) -> bytes:
        with self.read_stream(path) as chunks:
            return b"".join(chunks)

    def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read(path).decode(encoding, errors)

    def write(
        self, path: str, data: UploadData, mode: int | str | None = None, user: str | None = None
    ) -> FileInfo:
        """Create or atomically replace ``path`` (parents are created).

        ``data`` is ``bytes``/``str`` or, streamed, a binary file object or an
        iterable of ``bytes``. ``mode`` is ``0o644`` or ``"0644"``.
        """
        call = api.write_file(self._sandbox_id, path, mode=mode, user=user)
        return self._http.call(call, content=sync_body(data))

    def list(self, path: str, depth: int = 1) -> builtins.list[FileInfo]:
        return self._http.call(api.list_files(self._sandbox_id, path, depth))

    def stat(self, path: str) -> FileInfo:
        return self._http.call(api.stat_file(self._sandbox_id, path))

    def exists(self, path: str) -> bool:
        return self._http.call(api.file_exists(self._sandbox_id, path))

    def make_dir(
        self,
        path: str,
        parents: bool = True,
        mode: int | str | None = None,
        user: str | None = None,
    ) -> bool:
        """Create a directory; ``False`` if it already existed."""
        return self._http.call(api.make_dir(self._sandbox_id, path, parents, mode, user))

    def remove(self, path: str, recursive: bool = False) -> None:
        self._http.call(api.remove_file(self._sandbox_id, path, recursive))

    def rename(self, source: str, destination: str) -> FileInfo:
        return self._http.call(api.rename(self._sandbox_id, source, destination))

    def chmod(self, path: str, mode: int | str) -> FileInfo:
        return self._http.call(api.chmod(self._sandbox_id, path, mode))

    def watch(self, path: str, recursive: bool = False) -> ResponseStream[FileEvent]:
        """Changes under ``path`` until closed; the watch is active when this returns."""
        return self._http.stream(api.watch(self._sandbox_id, path, recursive))

    def download(self, remote: str, local_path: StrPath) -> Path:
        """Stream ``remote`` into ``local_path`` (replaced atomically when complete)."""
        with _atomic_local(local_path) as out, self.read_stream(remote) as chunks:
            for chunk in chunks:
                out.write(chunk)
        return Path(local_path)

    def upload(
        self,
        local_path: StrPath,
        remote: str,
        mode: int | str | None = None,
        user: str | None = None,
    ) -> FileInfo:
        """Stream the local file ``local_path`` to ``remote``."""
        with open(local_path, "rb") as src:
            return self.write(remote, src, mode=mode, user=user)


class AsyncFiles:
    """The async mirror of :class:`Files`."""

    def __init__(self, http: AsyncHttp, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    def read_stream(self, path: str) -> AsyncResponseStream[bytes]:
        """``async for chunk in files.read_stream(path)`` (or ``await`` it to open it now)."""
        return self._http.stream(api.read_file(self._sandbox_id, path))

    async def read(self, path: str) -> bytes:
        async with self.read_stream(path) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        return (await self.read(path)).decode(encoding, errors)

    async def write(
        self,
        path: str,
        data: AsyncUploadData,
        mode: int | str | None = None,
        user: str | None = None,
    ) -> FileInfo:
        """See :meth:`Files.write`; ``data`` may also be an async iterable of bytes."""
        call = api.write_file(self._sandbox_id, path, mode=mode, user=user)
        return await self._http.call(call, content=async_body(data))

    async def list(self, path: str, depth: int = 1) -> builtins.list[FileInfo]:
        return await self._http.call(api.list_files(self._sandbox_id, path, depth))

    async def stat(self, path: str) -> FileInfo:
        return await self._http.call(api.stat_file(self._sandbox_id, path))

    async def exists(self, path: str) -> bool:
        return await self._http.call(api.file_exists(self._sandbox_id, path))

    async def make_dir(
        self,
        path: str,
        parents: bool = True,
        mode: int | str | None = None,
        user: str | None = None,
    ) -> bool:
        return await self._http.call(api.make_dir(self._sandbox_id, path, parents, mode, user))

    async def remove(self, path: str, recursive: bool = False) -> None:
        await self._http.call(api.remove_file(self._sandbox_id, path, recursive))

    async def rename(self, source: str, destination: str) -> FileInfo:
        return await self._http.call(api.rename(self._sandbox_id, source, destination))

    async def chmod(self, path: str, mode: int | str) -> FileInfo:
        return await self._http.call(api.chmod(self._sandbox_id, path, mode))

    def watch(self, path: str, recursive: bool = False) -> AsyncResponseStream[FileEvent]:
        """``async with files.watch(path) as events: async for ev in events`` — the
        watch starts when entered or awaited; start it before making changes."""
        return self._http.stream(api.watch(self._sandbox_id, path, recursive))

    async def download(self, remote: str, local_path: StrPath) -> Path:
        with _atomic_local(local_path) as out:
            async with self.read_stream(remote) as chunks:
                async for chunk in chunks:
                    out.write(chunk)
        return Path(local_path)

    async def upload(
        self,
        local_path: StrPath,
        remote: str,
        mode: int | str | None = None,
        user: str | None = None,
    ) -> FileInfo:
        with open(local_path, "rb") as src:
            return await self.write(remote, src, mode=mode, user=user)
