"""envd's ``filesystem.Filesystem`` service and its ``/files`` transfers, over the agent.

Paths are resolved as envd does (relative to the user's home). Watchers made by
``CreateWatcher`` (what the sync SDK's ``watch_dir`` uses) are agent watch
streams drained into a bounded buffer that ``GetWatcherEvents`` empties; each
caller may keep :data:`MAX_WATCHERS` per sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..core.agent_client import WatchStream
from ..errors import AtelierError, FileExists, InvalidRequest, NotFound
from .calls import Call, EventStream
from .mapping import entry_info, resolve_path, watch_event

__all__ = ["FilesystemService", "download", "upload"]

MAX_WATCHERS = 64
MAX_BUFFERED_EVENTS = 10_000
UPLOAD_CHUNK = 1024 * 1024


def _path(call: Call, message: dict[str, Any], key: str = "path") -> str:
    raw = message.get(key)
    if not isinstance(raw, str):
        raise InvalidRequest(f"{key} is required")
    return resolve_path(raw, call.user)


@dataclass(eq=False)
class _Watcher:
    sandbox_id: str
    owner: str
    root: str
    stream: WatchStream
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_BUFFERED_EVENTS))
    task: asyncio.Task[None] | None = None
    error: AtelierError | None = None

    async def pump(self) -> None:
        try:
            async for event in self.stream:
                self.events.append(watch_event(event, self.root))
        except AtelierError as exc:
            self.error = exc

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        with contextlib.suppress(Exception):
            await self.stream.aclose()


class FilesystemService:
    def __init__(self) -> None:
        self._watchers: dict[str, _Watcher] = {}

    # -- unary -----------------------------------------------------------------------
    async def stat(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        return {"entry": entry_info(await call.agent.stat(_path(call, message)))}

    async def list_dir(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        depth = int(message.get("depth") or 1)
        entries = await call.agent.list_dir(_path(call, message), depth=depth)
        return {"entries": [entry_info(e) for e in entries]}

    async def make_dir(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        path = _path(call, message)
        result = await call.agent.mkdir(path, parents=True, user=call.user)
        if not result["created"]:
            raise FileExists(f"{path} already exists")
        return {"entry": entry_info(result["entry"])}

    async def move(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        info = await call.agent.rename(
            _path(call, message, "source"), _path(call, message, "destination")
        )
        return {"entry": entry_info(info)}

    async def remove(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        await call.agent.remove(_path(call, message), recursive=True)
        return {}

    # -- watching --------------------------------------------------------------------
    async def watch_dir(self, call: Call, message: dict[str, Any]) -> EventStream:
        root = _path(call, message)
        async with call.agent.watch(root, recursive=bool(message.get("recursive"))) as stream:
            yield {"start": {}}
            async for event in stream:
                yield {"filesystem": watch_event(event, root)}

    async def create_watcher(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        await self._drop_dead(call.sandbox_id)
        mine = [
            w
            for w in self._watchers.values()
            if w.sandbox_id == call.sandbox_id and w.owner == call.principal.token_id
        ]
        if len(mine) >= MAX_WATCHERS:
            raise InvalidRequest(f"at most {MAX_WATCHERS} watchers per sandbox: stop one first")
        root = _path(call, message)
        stream = call.agent.watch(root, recursive=bool(message.get("recursive")))
        try:
            await stream.ready()
        except BaseException:
            await stream.aclose()
            raise
        watcher = _Watcher(call.sandbox_id, call.principal.token_id, root, stream)
        watcher.task = asyncio.get_running_loop().create_task(watcher.pump())
        watcher_id = "w-" + secrets.token_hex(8)
        self._watchers[watcher_id] = watcher
        return {"watcherId": watcher_id}

    def _watcher(self, call: Call, message: dict[str, Any]) -> tuple[str, _Watcher]:
        watcher_id = str(message.get("watcherId") or "")
        watcher = self._watchers.get(watcher_id)
        if (
            watcher is None
            or watcher.sandbox_id != call.sandbox_id
            or watcher.owner != call.principal.token_id
        ):
            raise NotFound(f"watcher {watcher_id!r} does not exist")
        return watcher_id, watcher

    async def get_watcher_events(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        watcher_id, watcher = self._watcher(call, message)
        events = list(watcher.events)
        watcher.events.clear()
        if not events and watcher.task is not None and watcher.task.done():
            self._watchers.pop(watcher_id, None)
            await watcher.close()
            raise watcher.error or NotFound(f"watcher {watcher_id} ended")
        return {"events": events}

    async def remove_watcher(self, call: Call, message: dict[str, Any]) -> dict[str, Any]:
        watcher_id, watcher = self._watcher(call, message)
        self._watchers.pop(watcher_id, None)
        await watcher.close()
        return {}

    async def _drop_dead(self, sandbox_id: str) -> None:
        for watcher_id, watcher in list(self._watchers.items()):
            if (
                watcher.sandbox_id == sandbox_id
                and watcher.task is not None
                and watcher.task.done()
            ):
                self._watchers.pop(watcher_id, None)
                await watcher.close()

    async def close(self) -> None:
        watchers, self._watchers = list(self._watchers.values()), {}
        for watcher in watchers:
            await watcher.close()


# -- /files ------------------------------------------------------------------------------
async def download(call: Call, request: Request) -> tuple[int, AsyncIterator[bytes]]:
    user = request.query_params.get("username") or call.user
    return await call.agent.read_file(resolve_path(request.query_params.get("path", ""), user))


async def _gunzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    inflater = zlib.decompressobj(wbits=31)
    async for chunk in chunks:
        try:
            data = inflater.decompress(chunk)
        except zlib.error as exc:
            raise InvalidRequest(f"the upload is not valid gzip: {exc}") from exc
        if data:
            yield data
    rest = inflater.flush()
    if rest:
        yield rest


async def _upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk


def _written(path: str) -> dict[str, str]:
    return {"name": posixpath.basename(path), "type": "file", "path": path}


async def upload(call: Call, request: Request) -> list[dict[str, str]]:
    """``POST /files``: one octet-stream body, or multipart parts named by their filename."""
    user = request.query_params.get("username") or call.user
    query_path = request.query_params.get("path")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/octet-stream"):
        if not query_path:
            raise InvalidRequest("an octet-stream upload needs ?path=")
        path = resolve_path(query_path, user)
        body: AsyncIterator[bytes] = request.stream()
        if request.headers.get("content-encoding", "").lower() == "gzip":
            body = _gunzip(body)
        await call.agent.write_file(path, body, user=user)
        return [_written(path)]
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("upload as multipart/form-data or application/octet-stream")
    async with request.form(max_files=10_000) as form:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise InvalidRequest("the upload holds no file")
        written = []
        for item in uploads:
            raw = query_path if query_path and len(uploads) == 1 else item.filename
            if not raw:
                raise InvalidRequest("every uploaded file needs a path as its filename")
            path = resolve_path(raw, user)
            await call.agent.write_file(path, _upload_chunks(item), user=user)
            written.append(_written(path))
    return written
