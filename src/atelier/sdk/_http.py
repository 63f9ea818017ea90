"""The thin I/O layer: run :mod:`atelier.sdk._api` calls over httpx, sync and async.

:class:`SyncHttp` and :class:`AsyncHttp` are mirror images; everything they do
besides the socket calls (error mapping, decoding, parsing) comes from
:mod:`atelier.sdk._base`.
"""

from __future__ import annotations

import functools
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Generic, Self, TypeAlias, TypeVar, cast

import httpx

from atelier.errors import AtelierError
from atelier.sdk._base import (
    Call,
    ConnectionConfig,
    Decoder,
    StreamCall,
    error_from_response,
    translate_errors,
)

__all__ = [
    "AsyncHttp",
    "AsyncResponseStream",
    "AsyncUploadData",
    "ResponseStream",
    "SyncHttp",
    "UploadData",
    "async_body",
    "sync_body",
]

T = TypeVar("T")

CHUNK_SIZE = 256 * 1024

UploadData: TypeAlias = bytes | bytearray | memoryview | str | IO[bytes] | IO[str] | Iterable[bytes]
AsyncUploadData: TypeAlias = UploadData | AsyncIterable[bytes]

_OCTET = {"Content-Type": "application/octet-stream"}


# -- upload bodies -----------------------------------------------------------


def _chunk(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"upload iterators must yield bytes, got {type(value).__name__}")


def _read_chunks(fileobj: IO[Any]) -> Iterator[bytes]:
    while chunk := fileobj.read(CHUNK_SIZE):
        yield _chunk(chunk)


def _iter_chunks(items: Iterable[Any]) -> Iterator[bytes]:
    for item in items:
        if chunk := _chunk(item):
            yield chunk


async def _aiter_chunks(items: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    async for item in items:
        if chunk := _chunk(item):
            yield chunk


async def _aiter_sync(items: Iterator[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def sync_body(data: UploadData) -> bytes | Iterator[bytes]:
    """Whole bytes stay bytes; file objects and iterators are streamed chunk by chunk."""
    if isinstance(data, str | bytes | bytearray | memoryview):
        return _chunk(data)
    if hasattr(data, "read"):
        return _read_chunks(cast("IO[Any]", data))
    if isinstance(data, Iterable):
        return _iter_chunks(data)
    raise TypeError(f"cannot upload a {type(data).__name__}")


def async_body(data: AsyncUploadData) -> bytes | AsyncIterator[bytes]:
    """Like :func:`sync_body`; also takes async iterables. Sync sources are read inline."""
    if isinstance(data, AsyncIterable):
        return _aiter_chunks(data)
    body = sync_body(data)
    return body if isinstance(body, bytes) else _aiter_sync(body)


# -- answers -----------------------------------------------------------------


def _parse(call: Call[T], response: httpx.Response) -> T:
    if not response.is_success:
        raise error_from_response(response.status_code, response.content, response.reason_phrase)
    try:
        return call.parse(response)
    except (ValueError, KeyError, TypeError) as exc:
        raise AtelierError(
            f"unexpected answer to {call.method} {call.path}: {exc}",
            details={"status": response.status_code},
        ) from exc


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client of this process.

    Building one loads the whole CA bundle (50-100 ms); httpx does it for each
    new client, even for plain-HTTP URLs, which would dominate a fast create.
    """
    return ssl.create_default_context()


# -- sync --------------------------------------------------------------------


class SyncHttp:
    """Executes calls with an ``httpx.Client``; pass ``transport`` to fake the network."""

    def __init__(
        self, config: ConnectionConfig, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self._client = httpx.Client(
            base_url=config.api_url,
            headers=config.headers,
            timeout=config.timeout(),
            transport=transport,
            verify=_tls_context(),
        )

    def sibling(self) -> SyncHttp:
        """A client of its own to the same server (for another ``Sandbox`` object)."""
        return SyncHttp(self.config, self._transport)

    def call(self, call: Call[T], content: bytes | Iterator[bytes] | None = None) -> T:
        with translate_errors(f"{call.method} {call.path}"):
            response = self._client.request(
                call.method,
                call.path,
                params=tuple(call.params),
                json=call.json,
                content=content,
                headers=_OCTET if content is not None else None,
            )
        return _parse(call, response)

    def open(self, call: StreamCall[Any]) -> httpx.Response:
        """Send a request and return the answer unread (status already checked)."""
        request = self._client.build_request(
            call.method,
            call.path,
            params=tuple(call.params),
            json=call.json,
            timeout=self.config.stream_timeout(),
        )
        with translate_errors(f"{call.method} {call.path}"):
            response = self._client.send(request, stream=True)
        if not response.is_success:
            try:
                with translate_errors():
                    response.read()
            finally:
                response.close()
            raise error_from_response(
                response.status_code, response.content, response.reason_phrase
            )
        return response

    def stream(self, call: StreamCall[T]) -> ResponseStream[T]:
        return ResponseStream(self.open(call), call.decoder())

    def close(self) -> None:
        self._client.close()


class ResponseStream(Generic[T]):
    """An open streamed answer, iterated item by item. Close it (or use ``with``)
    to stop early; it closes itself at the end."""

    def __init__(self, response: httpx.Response, decoder: Decoder[T]) -> None:
        self._response = response
        self._decoder = decoder
        self._chunks = response.iter_bytes()
        self._pending: deque[T] = deque()
        self._done = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        while not self._pending:
            if self._done:
                raise StopIteration
            self._fill()
        return self._pending.popleft()

    def _fill(self) -> None:
        try:
            self._decoder.feed(b"")  # raises an error deferred by the decoder
            with translate_errors("reading the stream"):
                chunk = next(self._chunks, None)
            if chunk is None:
                items = self._decoder.finish()
                self.close()
            else:
                items = self._decoder.feed(chunk)
        except BaseException:
            self.close()
            raise
        self._pending.extend(items)

    def close(self) -> None:
        self._done = True
        self._pending.clear()
        self._response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- async -------------------------------------------------------------------


class AsyncHttp:
    """The async mirror of :class:`SyncHttp` (``httpx.AsyncClient``)."""

    def __init__(
        self, config: ConnectionConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self._client = httpx.AsyncClient(
            base_url=config.api_url,
            headers=config.headers,
            timeout=config.timeout(),
            transport=transport,
            verify=_tls_context(),
        )

    def sibling(self) -> AsyncHttp:
        """A client of its own to the same server (for another ``AsyncSandbox``)."""
        return AsyncHttp(self.config, self._transport)

    async def call(self, call: Call[T], content: bytes | AsyncIterator[bytes] | None = None) -> T:
        with translate_errors(f"{call.method} {call.path}"):
            response = await self._client.request(
                call.method,
                call.path,
                params=tuple(call.params),
                json=call.json,
                content=content,
                headers=_OCTET if content is not None else None,
            )
        return _parse(call, response)

    async def open(self, call: StreamCall[Any]) -> httpx.Response:
        request = self._client.build_request(
            call.method,
            call.path,
            params=tuple(call.params),
            json=call.json,
            timeout=self.config.stream_timeout(),
        )
        with translate_errors(f"{call.method} {call.path}"):
            response = await self._client.send(request, stream=True)
        if not response.is_success:
            try:
                with translate_errors():
                    await response.aread()
            finally:
                await response.aclose()
            raise error_from_response(
                response.status_code, response.content, response.reason_phrase
            )
        return response

    def stream(self, call: StreamCall[T]) -> AsyncResponseStream[T]:
        return AsyncResponseStream(self, call)

    async def close(self) -> None:
        await self._client.aclose()


class AsyncResponseStream(Generic[T]):
    """A streamed answer for ``async for``. The request is sent by ``await stream``,
    ``async with stream`` or the first iteration, whichever comes first."""

    def __init__(self, http: AsyncHttp, call: StreamCall[T]) -> None:
        self._http = http
        self._call = call
        self._response: httpx.Response | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._decoder = call.decoder()
        self._pending: deque[T] = deque()
        self._done = False

    async def open(self) -> Self:
        if self._response is None and not self._done:
            self._response = await self._http.open(self._call)
            self._chunks = self._response.aiter_bytes()
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self.open().__await__()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        while not self._pending:
            if self._done:
                raise StopAsyncIteration
            await self._fill()
        return self._pending.popleft()

    async def _fill(self) -> None:
        try:
            await self.open()
            self._decoder.feed(b"")  # raises an error deferred by the decoder
            assert self._chunks is not None
            with translate_errors("reading the stream"):
                chunk = await anext(self._chunks, None)
            if chunk is None:
                items = self._decoder.finish()
                await self.aclose()
            else:
                items = self._decoder.feed(chunk)
        except BaseException:
            await self.aclose()
            raise
        self._pending.extend(items)

    async def aclose(self) -> None:
        self._done = True
        self._pending.clear()
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
