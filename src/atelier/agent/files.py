"""File operations (``fs.*`` except watch). Blocking work runs in worker threads.

Reads and writes stream in chunks under the protocol's flow control, so a
multi-gigabyte file never sits in the agent's memory. Writes go to a
temporary file in the target's directory that is renamed over the target
only after the host's EOF; on any failure or early close it is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import stat
from collections.abc import Callable
from typing import Any, TypeVar

from .common import AgentError, from_oserror, iso_utc, parse_mode, require_abs_path
from .protocol import Data, Eof, Stream
from .users import Identity, group_name, refresh, resolve_user, user_name

__all__ = ["FILE_OPS", "MAX_LIST_ENTRIES", "file_info", "is_write_temp", "run_blocking"]

READ_CHUNK = 256 * 1024
WRITE_FLUSH = 256 * 1024
MAX_LIST_ENTRIES = 10_000
_T = TypeVar("_T")


async def run_blocking(path: str | None, fn: Callable[..., _T], *args: Any) -> _T:
    """Run ``fn(*args)`` in a worker thread; OSErrors become :class:`AgentError`."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, functools.partial(fn, *args))
    except OSError as exc:
        raise from_oserror(exc, path if exc.filename is None else None) from None


class _FdJobs:
    """Blocking jobs on one file descriptor, with a close that waits for them.

    A cancelled handler does not stop a job already running in a thread, so
    the descriptor is only closed (or the temp file removed) after it ends:
    never while a worker may still use the fd number.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._loop = asyncio.get_running_loop()
        self._last: asyncio.Future[Any] | None = None

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        fut = self._loop.run_in_executor(None, functools.partial(fn, *args))
        self._last = fut
        try:
            return await asyncio.shield(fut)
        except OSError as exc:
            raise from_oserror(exc, self._path if exc.filename is None else None) from None

    async def finally_run(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in a thread after the job in flight; survives cancellation."""
        last = self._last

        async def job() -> None:
            if last is not None:
                with contextlib.suppress(BaseException):
                    await last
            await self._loop.run_in_executor(None, fn)

        task = self._loop.create_task(job())
        _background.add(task)
        task.add_done_callback(_background.discard)
        await asyncio.shield(task)


_background: set[asyncio.Task[None]] = set()


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def file_info(path: str, st: os.stat_result | None = None) -> dict[str, Any]:
    """The API's file info for ``path`` (lstat semantics)."""
    if st is None:
        st = os.lstat(path)
    mode = st.st_mode
    target = None
    if stat.S_ISLNK(mode):
        kind = "symlink"
        with contextlib.suppress(OSError):
            target = os.readlink(path)
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISREG(mode):
        kind = "file"
    else:
        kind = "other"
    return {
        "name": os.path.basename(path) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": f"{stat.S_IMODE(mode):04o}",
        "owner": user_name(st.st_uid),
        "group": group_name(st.st_gid),
        "modified_at": iso_utc(st.st_mtime),
        "symlink_target": target,
    }


def _chown(target: str | int, ident: Identity) -> None:
    if os.geteuid() == 0:
        if isinstance(target, int):
            os.fchown(target, ident.uid, ident.gid)
        else:
            os.lchown(target, ident.uid, ident.gid)


def _make_dirs(path: str, mode: int, ident: Identity) -> bool:
    """Create ``path`` and missing parents (each chmod'ed and chown'ed); False if it existed."""
    missing = []
    current = path
    while not os.path.isdir(current):
        if os.path.lexists(current):
            raise FileExistsError(17, "File exists", current)
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue
        os.chmod(directory, mode)
        _chown(directory, ident)
    return bool(missing)


# -- fs.read -------------------------------------------------------------------
def _open_read(path: str) -> tuple[int, int, bool]:
    kind = stat.S_IFMT(os.stat(path).st_mode)
    if kind in (stat.S_IFIFO, stat.S_IFSOCK):  # open() could block a worker forever
        raise AgentError("invalid_request", f"not a regular file: {path}")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size, stat.S_ISREG(st.st_mode)


async def op_read(stream: Stream, req: dict[str, Any]) -> None:
    path = require_abs_path(req.get("path"))
    fd, size, regular = await run_blocking(path, _open_read, path)
    jobs = _FdJobs(path)
    try:
        await stream.send_msg({"size": size})
        remaining = size if regular else -1  # regular files: exactly the announced size
        while remaining != 0:
            await stream.wait_credit()
            want = READ_CHUNK if remaining < 0 else min(READ_CHUNK, remaining)
            chunk = await jobs.run(os.read, fd, want)
            if not chunk:
                break
            if remaining > 0:
                remaining -= len(chunk)
            await stream.send(chunk, 1)
        await stream.send_eof(1)
    finally:
        await jobs.finally_run(functools.partial(_close_quietly, fd))


# -- fs.write ------------------------------------------------------------------
_WRITE_TEMP = re.compile(r"^\..*\.atelier-[0-9a-f]{12}\.tmp$")


def is_write_temp(name: str) -> bool:
    """Whether ``name`` is one of the temporary files ``fs.write`` renames into place."""
    return _WRITE_TEMP.match(name) is not None


def _prepare_write(path: str, ident: Identity, make_parents: bool) -> tuple[int, str]:
    if path == "/":
        raise IsADirectoryError(21, "Is a directory", path)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
    parent, name = os.path.split(path)
    if make_parents:
        _make_dirs(parent, 0o755, ident)
    tmp = os.path.join(parent, f".{name[:40]}.atelier-{os.urandom(6).hex()}.tmp")  # < 255 bytes
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return fd, tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _commit(fd: int, tmp: str, path: str, mode: int, ident: Identity) -> dict[str, Any]:
    try:
        os.fchmod(fd, mode)
        _chown(fd, ident)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return file_info(path)


def _abort(fd: int | None, tmp: str) -> None:
    if fd is not None:
        _close_quietly(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


async def op_write(stream: Stream, req: dict[str, Any]) -> None:
    path = require_abs_path(req.get("path"))
    mode = parse_mode(req.get("mode"), 0o644)
    ident = resolve_user(req.get("user"))
    make_parents = bool(req.get("make_parents", True))
    fd, tmp = await run_blocking(path, _prepare_write, path, ident, make_parents)
    jobs = _FdJobs(path)
    open_fd: int | None = fd
    committed = False
    try:
        pending = bytearray()
        while True:
            event = await stream.recv()
            if event is None:
                return  # the host closed without EOF: abort
            if isinstance(event, Data) and event.channel == 0:
                pending += event.data
                if len(pending) >= WRITE_FLUSH:
                    data, pending = bytes(pending), bytearray()
                    await jobs.run(_write_all, fd, data)
            elif isinstance(event, Eof) and event.channel == 0:
                break
        if pending:
            await jobs.run(_write_all, fd, bytes(pending))
        open_fd = None  # _commit closes it, whatever happens
        info = await jobs.run(_commit, fd, tmp, path, mode, ident)
        committed = True
        await stream.send_msg(info)
    finally:
        if not committed:
            await jobs.finally_run(functools.partial(_abort, open_fd, tmp))


# -- metadata ops ----------------------------------------------------------------
def _list(path: str, depth: int) -> dict[str, Any]:
    if not stat.S_ISDIR(os.stat(path).st_mode):
        raise NotADirectoryError(20, "Not a directory", path)
    refresh()
    entries: list[dict[str, Any]] = []
    truncated = False

    def walk(directory: str, level: int) -> None:
        nonlocal truncated
        with os.scandir(directory) as it:
            items = sorted(it, key=lambda e: e.name)
        for item in items:
            if len(entries) >= MAX_LIST_ENTRIES:
                truncated = True
                return
            full = os.path.join(directory, item.name)
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            entries.append(file_info(full, st))
            if level < depth and stat.S_ISDIR(st.st_mode):
                with contextlib.suppress(PermissionError, FileNotFoundError):
                    walk(full, level + 1)

    walk(path, 1)
    result: dict[str, Any] = {"entries": entries}
    if truncated:
        result["truncated"] = True
    return result


def _stat(path: str) -> dict[str, Any]:
    refresh()
    return file_info(path)


def _mkdir(path: str, parents: bool, mode: int, ident: Identity) -> dict[str, Any]:
    if os.path.isdir(path):
        return {"created": False, "entry": file_info(path)}
    if parents:
        created = _make_dirs(path, mode, ident)
    else:
        os.mkdir(path, mode)
        os.chmod(path, mode)
        _chown(path, ident)
        created = True
    return {"created": created, "entry": file_info(path)}


def _remove(path: str, recursive: bool) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        if recursive:
            import shutil  # only here: it imports bz2/lzma, slow under gVisor

            shutil.rmtree(path)
        else:
            os.rmdir(path)
    else:
        os.unlink(path)


def _rename(source: str, destination: str) -> dict[str, Any]:
    os.rename(source, destination)
    return file_info(destination)


def _chmod(path: str, mode: int) -> dict[str, Any]:
    os.chmod(path, mode)
    return file_info(path)


async def op_stat(stream: Stream, req: dict[str, Any]) -> None:
    path = require_abs_path(req.get("path"))
    await stream.send_msg(await run_blocking(path, _stat, path))


async def op_list(stream: Stream, req: dict[str, Any]) -> None:
    path = require_abs_path(req.get("path"))
    depth = req.get("depth", 1)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise AgentError("invalid_request", "depth must be an integer >= 1")
    await stream.send_msg(await run_blocking(path, _list, path, depth))


async def op_exists(stream: Stream, req: dict[str, Any]) -> None:
    path = require_abs_path(req.get("path"))
    await stream.send_msg({"exists": await run_blocking(path, os.path.lexists, path)})


async def op_mkdir(stream: Stream, req: dict[str, Any]) -> None:
    path = require_abs_path(req.get("path"))
    mode = parse_mode(req.get("mode"), 0o755)
    ident = resolve_user(req.get("user"))
    parents = bool(req.get("parents", True))
    await stream.send_msg(await run_blocking(path, _mkdir, path, parents, mode, ident))


async def op_remove(stream: Stream, req: dict[str, Any]) -> None:
    path = require_abs_path(req.get("path"))
    if path == "/":
        raise AgentError("invalid_path", "refusing to remove /")
    await run_blocking(path, _remove, path, bool(req.get("recursive", False)))
    await stream.send_msg({"ok": True})


async def op_rename(stream: Stream, req: dict[str, Any]) -> None:
    source = require_abs_path(req.get("source"), "source")
    destination = require_abs_path(req.get("destination"), "destination")
    await stream.send_msg(await run_blocking(None, _rename, source, destination))


async def op_chmod(stream: Stream, req: dict[str, Any]) -> None:
    path = require_abs_path(req.get("path"))
    if req.get("mode") is None:
        raise AgentError("invalid_request", "mode is required")
    mode = parse_mode(req.get("mode"), 0)
    await stream.send_msg(await run_blocking(path, _chmod, path, mode))


FILE_OPS = {
    "fs.read": op_read,
    "fs.write": op_write,
    "fs.stat": op_stat,
    "fs.list": op_list,
    "fs.exists": op_exists,
    "fs.mkdir": op_mkdir,
    "fs.remove": op_remove,
    "fs.rename": op_rename,
    "fs.chmod": op_chmod,
}
