"""``fs.watch``: inotify (through ctypes) read by the event loop.

The agent answers ``{"type": "ready"}`` once the watches are in place, then
one ``{"type": "event", "event": "create|modify|delete|rename", "path",
"is_dir"}`` message per change until the host closes the stream. With
``recursive`` every existing and new subdirectory is watched too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import stat
import struct
from typing import Any

from .common import AgentError, log, require_abs_path
from .files import is_write_temp, run_blocking
from .protocol import Stream

__all__ = ["Inotify", "op_watch"]

IN_MODIFY = 0x2
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
_MASK = (
    IN_CREATE
    | IN_MODIFY
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_EXCL_UNLINK
)
_EVENT = struct.Struct("iIII")
_QUEUE_MAX = 8192
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


class Inotify:
    """A non-blocking, close-on-exec inotify instance."""

    def __init__(self) -> None:
        self.fd = _check(int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)), "inotify_init1")

    def add(self, path: str) -> int:
        wd = int(_libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(_MASK)))
        return _check(wd, "inotify_add_watch", path)

    def remove(self, wd: int) -> None:
        _libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[tuple[int, int, str]]:
        """Pending events as ``(wd, mask, name)``; empty if none."""
        try:
            data = os.read(self.fd, 256 * 1024)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            raw = data[offset : offset + length].split(b"\0", 1)[0]
            offset += length
            events.append((wd, mask, os.fsdecode(raw)))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class _Watcher:
    def __init__(self, root: str, recursive: bool) -> None:
        self.root = root
        self.recursive = recursive
        self.ino = Inotify()
        self.paths: dict[int, str] = {}
        self.root_wd = -1
        self._temp_moved_in: int | None = None  # wd of a just-renamed fs.write temp file
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.changed = asyncio.Event()
        self.ended = False
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._limbo: list[tuple[int, int, str]] = []
        self._scans: set[asyncio.Future[list[dict[str, Any]]]] = set()

    def add_tree(self, top: str, report: bool) -> list[dict[str, Any]]:
        """(worker thread) Watch ``top`` and, if recursive, every directory below it.

        With ``report``, entries found below ``top`` are returned as create
        events (they may have appeared before the watch was in place).
        """
        found: list[dict[str, Any]] = []
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                wd = self.ino.add(directory)
            except OSError:
                continue  # vanished, or not a directory any more
            self.paths[wd] = directory
            if directory == self.root:
                self.root_wd = wd
            if not self.recursive:
                break
            try:
                with os.scandir(directory) as it:
                    entries = list(it)
            except OSError:
                continue
            for entry in entries:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if report:
                    found.append(_event("create", entry.path, is_dir))
                if is_dir:
                    stack.append(entry.path)
        return found

    def start(self) -> None:
        self._resume()

    def _resume(self) -> None:
        if not self._reading and self.ino.fd >= 0:
            self._loop.add_reader(self.ino.fd, self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.ino.fd)
            self._reading = False

    def _push(self, event: dict[str, Any]) -> None:
        if is_write_temp(os.path.basename(event["path"])):
            return  # fs.write's own temporary file: the rename onto the target is reported
        last = self.queue[-1] if self.queue else None
        if event["event"] == "modify" and last == event:
            return  # coalesce a burst of writes to one file
        self.queue.append(event)
        self.changed.set()
        if len(self.queue) >= _QUEUE_MAX:
            self._pause()  # the kernel queues (and reports overflow) meanwhile

    def _on_readable(self) -> None:
        for wd, mask, name in self.ino.read():
            self._handle(wd, mask, name)

    def _handle(self, wd: int, mask: int, name: str, retry: bool = False) -> None:
        if mask & IN_Q_OVERFLOW:
            log.warning("watch %s: inotify queue overflow, events lost", self.root)
            return
        base = self.paths.get(wd)
        if base is None:
            if not retry and self._scans:
                self._limbo.append((wd, mask, name))  # a scan is registering it right now
            return
        if mask & IN_IGNORED:
            self.paths.pop(wd, None)
            if wd == self.root_wd:
                self._end()
            return
        path = os.path.join(base, name) if name else base
        is_dir = bool(mask & IN_ISDIR)
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
            if wd == self.root_wd:
                self._push(_event("delete" if mask & IN_DELETE_SELF else "rename", path, True))
                self._end()
            elif mask & IN_MOVE_SELF:  # its path is stale now: the parent reported the move
                self.paths.pop(wd, None)
                self.ino.remove(wd)
            return
        # fs.write renames its temporary file onto the target: the two halves of
        # that rename arrive back to back and are reported as one "create".
        temp_moved, self._temp_moved_in = self._temp_moved_in, None
        if mask & IN_MOVED_FROM and is_write_temp(name):
            self._temp_moved_in = wd
            return
        if mask & IN_MOVED_TO and temp_moved == wd:
            self._push(_event("create", path, is_dir))
            return
        if mask & IN_CREATE:
            self._push(_event("create", path, is_dir))
        elif mask & IN_MODIFY:
            self._push(_event("modify", path, is_dir))
        elif mask & IN_DELETE:
            self._push(_event("delete", path, is_dir))
        elif mask & (IN_MOVED_FROM | IN_MOVED_TO):
            self._push(_event("rename", path, is_dir))
        if is_dir and self.recursive and mask & (IN_CREATE | IN_MOVED_TO):
            self._scan(path)

    def _scan(self, path: str) -> None:
        fut = self._loop.run_in_executor(None, self.add_tree, path, True)
        self._scans.add(fut)
        fut.add_done_callback(self._scanned)

    def _scanned(self, fut: asyncio.Future[list[dict[str, Any]]]) -> None:
        self._scans.discard(fut)
        if fut.cancelled() or fut.exception() is not None or self.ended:
            return
        for event in fut.result():
            self._push(event)
        limbo, self._limbo = self._limbo, []
        for wd, mask, name in limbo:
            self._handle(wd, mask, name, retry=not self._scans)

    def _end(self) -> None:
        self.ended = True
        self.changed.set()

    def take(self) -> dict[str, Any] | None:
        if not self.queue:
            return None
        event = self.queue.popleft()
        if not self._reading and len(self.queue) < _QUEUE_MAX // 2:
            self._resume()
        return event

    def close(self) -> None:
        self._pause()
        self.ino.close()


def _event(kind: str, path: str, is_dir: bool) -> dict[str, Any]:
    return {"type": "event", "event": kind, "path": path, "is_dir": is_dir}


async def op_watch(stream: Stream, req: dict[str, Any]) -> None:
    path = require_abs_path(req.get("path"))
    recursive = bool(req.get("recursive", False))
    st = await run_blocking(path, os.stat, path)
    if not stat.S_ISDIR(st.st_mode):
        raise AgentError("not_a_directory", f"not a directory: {path}")
    watcher = _Watcher(path, recursive)
    try:
        await run_blocking(path, watcher.add_tree, path, False)
        if watcher.root_wd < 0:
            raise AgentError("file_not_found", f"cannot watch {path}")
        watcher.start()
        await stream.send_msg({"type": "ready", "path": path})
        closed = asyncio.ensure_future(stream.remote_closed_event.wait())
        try:
            while True:
                event = watcher.take()
                if event is not None:
                    await stream.send_msg(event)
                    continue
                if watcher.ended:
                    return
                watcher.changed.clear()
                changed = asyncio.ensure_future(watcher.changed.wait())
                await asyncio.wait([closed, changed], return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if closed.done():
                    return
        finally:
            closed.cancel()
    finally:
        watcher.close()
