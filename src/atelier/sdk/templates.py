"""Templates and the operations that build them: ``Templates`` (sync) and
``AsyncTemplates`` over one shared core.

>>> from atelier.sdk import Templates
>>> with Templates() as templates:
...     op = templates.build("web", "./app")          # tars ./app, uploads it
...     for line in op.logs():                         # follows until the end
...         print(line.line)
...     info = op.wait()                               # raises the build's error
...     templates.delete("web")                        # TemplateInUse while used

Builds and pulls run on the server as operations (``docs/api.md``, "Templates
and operations"); ``logs()`` streams an operation's log, ``wait()`` returns its
final :class:`OperationInfo` or raises its error as the matching
:class:`~atelier.errors.AtelierError` (``BuildFailed``, ``NotFound``...).
"""

from __future__ import annotations

import asyncio
import builtins
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from atelier.errors import AtelierError, from_payload
from atelier.sdk._base import (
    Call,
    NdjsonDecoder,
    Params,
    StreamCall,
    parse_none,
)
from atelier.sdk._client import ApiClient, AsyncApiClient
from atelier.sdk._http import CHUNK_SIZE, AsyncHttp, SyncHttp
from atelier.sdk.models import parse_datetime

__all__ = [
    "AsyncOperation",
    "AsyncTemplates",
    "LogLine",
    "Operation",
    "OperationEnd",
    "OperationInfo",
    "TemplateInfo",
    "Templates",
    "tar_context",
]


# -- models ------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateInfo:
    """A template as the server lists it."""

    name: str
    runtime: str
    ready: bool
    size_bytes: int | None
    version: int
    versions: tuple[int, ...] = ()
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TemplateInfo:
        size = data.get("size_bytes")
        return cls(
            name=str(data["name"]),
            runtime=str(data.get("runtime", "")),
            ready=bool(data.get("ready")),
            size_bytes=None if size is None else int(size),
            version=int(data.get("version", 1)),
            versions=tuple(int(v) for v in data.get("versions") or ()),
            created_at=parse_datetime(data.get("created_at")),
        )


@dataclass(frozen=True)
class OperationInfo:
    """A long-running server operation (``state``: running, succeeded, failed)."""

    id: str
    kind: str
    target: str
    state: str
    owner: str | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state != "running"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OperationInfo:
        return cls(
            id=str(data["id"]),
            kind=str(data.get("kind", "")),
            target=str(data.get("target", "")),
            state=str(data.get("state", "")),
            owner=data.get("owner"),
            error=dict(data["error"]) if data.get("error") else None,
            result=dict(data["result"]) if data.get("result") else None,
            created_at=parse_datetime(data.get("created_at")),
            finished_at=parse_datetime(data.get("finished_at")),
        )


@dataclass(frozen=True)
class LogLine:
    """One line of an operation's log."""

    line: str
    at: datetime | None = None


@dataclass(frozen=True)
class OperationEnd:
    """The last item of a log stream: the operation's state when the stream ended."""

    state: str
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = field(default=None)


def _log_item(obj: dict[str, Any]) -> LogLine | OperationEnd | None:
    if "line" in obj:
        return LogLine(str(obj["line"]), parse_datetime(obj.get("at")))
    if "state" in obj:
        return OperationEnd(str(obj["state"]), obj.get("error"), obj.get("result"))
    return None


def _raise_failure(info: OperationInfo) -> OperationInfo:
    if info.state == "failed":
        error = info.error or {"code": "internal", "message": f"operation {info.id} failed"}
        raise from_payload(error)
    return info


# -- calls -------------------------------------------------------------------


def _op_path(op_id: str) -> str:
    return f"/v1/operations/{quote(op_id, safe='')}"


def _operation(response: httpx.Response) -> OperationInfo:
    data = response.json()
    return OperationInfo.from_json(data.get("operation", data))


def list_templates() -> Call[list[TemplateInfo]]:
    def parse(response: httpx.Response) -> list[TemplateInfo]:
        return [TemplateInfo.from_json(t) for t in response.json().get("templates", [])]

    return Call("GET", "/v1/templates", parse)


def delete_template(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/templates/{quote(name, safe='')}", parse_none)


def pull_template(
    name: str, image: str, credentials: str | None, force: bool
) -> Call[OperationInfo]:
    body: dict[str, Any] = {"name": name, "image": image, "force": force}
    if credentials is not None:
        body["credentials"] = credentials
    return Call("POST", "/v1/templates/pull", _operation, json=body)


def build_template(
    name: str,
    dockerfile: str,
    build_args: Mapping[str, str] | None,
    target: str | None,
    no_cache: bool,
) -> Call[OperationInfo]:
    params: Params = [("name", name), ("dockerfile", dockerfile)]
    params.extend(("build_arg", f"{k}={v}") for k, v in (build_args or {}).items())
    if target is not None:
        params.append(("target", target))
    if no_cache:
        params.append(("no_cache", "true"))
    return Call("POST", "/v1/templates/build", _operation, params=params)


def get_operation(op_id: str) -> Call[OperationInfo]:
    return Call("GET", _op_path(op_id), _operation)


def list_operations(limit: int = 100) -> Call[list[OperationInfo]]:
    def parse(response: httpx.Response) -> list[OperationInfo]:
        return [OperationInfo.from_json(o) for o in response.json().get("operations", [])]

    return Call("GET", "/v1/operations", parse, params=[("limit", str(limit))])


def operation_logs(op_id: str, follow: bool) -> StreamCall[LogLine | OperationEnd]:
    return StreamCall(
        "GET",
        f"{_op_path(op_id)}/logs",
        lambda: NdjsonDecoder(_log_item),
        params=[("follow", "true" if follow else "false")],
    )


def tar_context(directory: str | os.PathLike[str], into: IO[bytes]) -> None:
    """Write ``directory`` as a gzip tar (paths relative to it, symlinks kept as
    links) into ``into``. Nothing is filtered: the server applies .dockerignore."""
    root = Path(directory)
    if not root.is_dir():
        raise AtelierError(f"build context {root} is not a directory")
    with tarfile.open(fileobj=into, mode="w:gz", compresslevel=1) as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name, recursive=True)


def _chunks(fileobj: IO[bytes]) -> Iterator[bytes]:
    fileobj.seek(0)
    while chunk := fileobj.read(CHUNK_SIZE):
        yield chunk


def _lines(items: Iterator[LogLine | OperationEnd], end: list[OperationEnd]) -> Iterator[LogLine]:
    for item in items:
        if isinstance(item, OperationEnd):
            end.append(item)
        else:
            yield item


# -- sync --------------------------------------------------------------------


class Operation:
    """A server operation: ``logs()`` to follow it, ``wait()`` for its outcome."""

    def __init__(self, info: OperationInfo, http: SyncHttp) -> None:
        self._http = http
        self.info = info
        self.end: OperationEnd | None = None  # set when a followed log stream ended

    def __repr__(self) -> str:
        return f"Operation(id={self.id!r}, kind={self.info.kind!r}, state={self.info.state!r})"

    @property
    def id(self) -> str:
        return self.info.id

    def refresh(self) -> OperationInfo:
        self.info = self._http.call(get_operation(self.id))
        return self.info

    def logs(self, follow: bool = True) -> Iterator[LogLine]:
        """The log's lines; with ``follow`` they are streamed until the operation ends."""
        end: list[OperationEnd] = []
        with self._http.stream(operation_logs(self.id, follow)) as stream:
            yield from _lines(stream, end)
        if end:
            self.end = end[-1]

    def wait(self) -> OperationInfo:
        """Follow the operation to its end; its info, or its error raised."""
        while not self.refresh().done:
            for _line in self.logs(follow=True):
                pass
        return _raise_failure(self.info)


class Templates(ApiClient):
    """Templates of one server: list, delete, pull and build."""

    def list(self) -> builtins.list[TemplateInfo]:
        return self._http.call(list_templates())

    def delete(self, name: str) -> None:
        """Delete every version; ``TemplateInUse`` (``details["sandbox_ids"]``) while used."""
        self._http.call(delete_template(name))

    def pull(
        self, name: str, image: str, *, credentials: str | None = None, force: bool = False
    ) -> Operation:
        """Start pulling ``image`` into a new version of ``name`` (admin token)."""
        return Operation(
            self._http.call(pull_template(name, image, credentials, force)), self._http
        )

    def build(
        self,
        name: str,
        context_dir: str | os.PathLike[str],
        *,
        dockerfile: str = "Dockerfile",
        build_args: Mapping[str, str] | None = None,
        target: str | None = None,
        no_cache: bool = False,
    ) -> Operation:
        """Upload ``context_dir`` and start building ``name`` from its ``dockerfile``
        (a path inside the context; admin token)."""
        with tempfile.TemporaryFile() as tmp:
            tar_context(context_dir, tmp)
            call = build_template(name, dockerfile, build_args, target, no_cache)
            info = self._http.call(call, content=_chunks(tmp))
        return Operation(info, self._http)

    def operation(self, op_id: str) -> Operation:
        return Operation(self._http.call(get_operation(op_id)), self._http)

    def operations(self, limit: int = 100) -> builtins.list[OperationInfo]:
        return self._http.call(list_operations(limit))


# -- async -------------------------------------------------------------------


class AsyncOperation:
    """The async :class:`Operation`."""

    def __init__(self, info: OperationInfo, http: AsyncHttp) -> None:
        self._http = http
        self.info = info
        self.end: OperationEnd | None = None

    def __repr__(self) -> str:
        return f"AsyncOperation(id={self.id!r}, kind={self.info.kind!r}, state={self.info.state!r})"

    @property
    def id(self) -> str:
        return self.info.id

    async def refresh(self) -> OperationInfo:
        self.info = await self._http.call(get_operation(self.id))
        return self.info

    async def logs(self, follow: bool = True) -> AsyncIterator[LogLine]:
        async with self._http.stream(operation_logs(self.id, follow)) as stream:
            async for item in stream:
                if isinstance(item, OperationEnd):
                    self.end = item
                else:
                    yield item

    async def wait(self) -> OperationInfo:
        while not (await self.refresh()).done:
            async for _line in self.logs(follow=True):
                pass
        return _raise_failure(self.info)


class AsyncTemplates(AsyncApiClient):
    """The async :class:`Templates`."""

    async def list(self) -> builtins.list[TemplateInfo]:
        return await self._http.call(list_templates())

    async def delete(self, name: str) -> None:
        await self._http.call(delete_template(name))

    async def pull(
        self, name: str, image: str, *, credentials: str | None = None, force: bool = False
    ) -> AsyncOperation:
        info = await self._http.call(pull_template(name, image, credentials, force))
        return AsyncOperation(info, self._http)

    async def build(
        self,
        name: str,
        context_dir: str | os.PathLike[str],
        *,
        dockerfile: str = "Dockerfile",
        build_args: Mapping[str, str] | None = None,
        target: str | None = None,
        no_cache: bool = False,
    ) -> AsyncOperation:
        with tempfile.TemporaryFile() as tmp:
            await asyncio.to_thread(tar_context, context_dir, tmp)
            call = build_template(name, dockerfile, build_args, target, no_cache)

            async def body() -> AsyncIterator[bytes]:
                for chunk in _chunks(tmp):
                    yield chunk

            info = await self._http.call(call, content=body())
        return AsyncOperation(info, self._http)

    async def operation(self, op_id: str) -> AsyncOperation:
        return AsyncOperation(await self._http.call(get_operation(op_id)), self._http)

    async def operations(self, limit: int = 100) -> builtins.list[OperationInfo]:
        return await self._http.call(list_operations(limit))
