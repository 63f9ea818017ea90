"""A small asyncio client for the QEMU Machine Protocol (QMP) on a unix socket.

QMP is one JSON object per line in each direction. The server greets with
``{"QMP": {...}}``; the client must send ``qmp_capabilities`` before any
other command. Every command carries an ``id`` that its reply echoes
(``{"return": ...}`` or ``{"error": {"class", "desc"}}``); asynchronous
``{"event": ...}`` messages may arrive at any time and are buffered until
someone waits for them.

File descriptors (``getfd``, e.g. a migration target opened by the host)
travel as ``SCM_RIGHTS`` ancillary data on the very message that names
them, which is why this client drives a raw non-blocking socket.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import json
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["QmpClient", "QmpClosed", "QmpError"]

_MAX_EVENTS = 1024
_MAX_LINE = 16 * 1024 * 1024


class QmpError(Exception):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QmpClosed(Exception):
    """The QMP connection is gone (QEMU exited or closed it)."""


class QmpClient:
    """One QMP session. Use :meth:`connect`; always :meth:`close` (or ``async with``)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=_MAX_EVENTS)
        self._event_added = asyncio.Event()
        self._closed: QmpClosed | None = None
        self._reader: asyncio.Task[None] | None = None
        self.greeting: dict[str, Any] = {}

    # -- connection -----------------------------------------------------------------
    @classmethod
    async def connect(cls, path: str | os.PathLike[str], timeout: float = 10.0) -> QmpClient:
        """Connect, read the greeting and negotiate capabilities."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        client = cls(sock)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, os.fspath(path))
                greeting = await client._read_message()
                if "QMP" not in greeting:
                    raise QmpClosed(f"not a QMP greeting: {greeting!r}")
                client.greeting = greeting["QMP"]
                client._reader = loop.create_task(client._read_loop())
                await client.execute("qmp_capabilities")
        except BaseException:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> QmpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._fail(QmpClosed("closed by this side"))
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # -- reading --------------------------------------------------------------------
    async def _read_message(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer:
            if len(self._buffer) > _MAX_LINE:
                raise QmpClosed("QMP message too long")
            chunk = await loop.sock_recv(self._sock, 65536)
            if not chunk:
                raise QmpClosed("QEMU closed the QMP connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        if not line.strip():
            return await self._read_message()
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise QmpClosed(f"invalid QMP message {line[:200]!r}") from exc
        if not isinstance(message, dict):
            raise QmpClosed(f"invalid QMP message {line[:200]!r}")
        return message

    async def _read_loop(self) -> None:
        try:
            while True:
                self._dispatch(await self._read_message())
        except (QmpClosed, OSError) as exc:
            self._fail(exc if isinstance(exc, QmpClosed) else QmpClosed(str(exc)))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "event" in message:
            self._events.append(message)
            self._event_added.set()
            return
        ident = message.get("id")
        future = self._pending.pop(ident, None) if isinstance(ident, int) else None
        if future is not None and not future.done():
            future.set_result(message)

    def _fail(self, exc: QmpClosed) -> None:
        if self._closed is None:
            self._closed = exc
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._closed)
        self._pending.clear()
        self._event_added.set()

    # -- commands -------------------------------------------------------------------
    async def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        fds: Sequence[int] = (),
        timeout: float = 30.0,
    ) -> Any:
        """Run ``command``; return its ``return`` value, raise :class:`QmpError` on error.

        ``fds`` are passed along (``SCM_RIGHTS``) with this very command.
        """
        if self._closed is not None:
            raise self._closed
        ident = self._next_id
        self._next_id += 1
        request: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            request["arguments"] = arguments
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            await self._send(json.dumps(request).encode() + b"\n", fds)
            async with asyncio.timeout(timeout):
                reply: dict[str, Any] = await future
        finally:
            self._pending.pop(ident, None)
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            raise QmpError(command, str(err.get("class", "")), str(err.get("desc", "")))
        return reply.get("return")

    async def _send(self, data: bytes, fds: Sequence[int]) -> None:
        loop = asyncio.get_running_loop()
        if not fds:
            try:
                await loop.sock_sendall(self._sock, data)
            except OSError as exc:
                self._fail(QmpClosed(f"QMP send failed: {exc}"))
                raise QmpClosed(str(exc)) from exc
            return
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = 0
        while sent == 0:
            try:
                sent = self._sock.sendmsg([data], ancillary)
            except BlockingIOError:
                await asyncio.sleep(0.005)
            except OSError as exc:
                self._fail(QmpClosed(f"QMP send failed: {exc}"))
                raise QmpClosed(str(exc)) from exc
        if sent < len(data):
            await loop.sock_sendall(self._sock, data[sent:])

    # -- events ---------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        """The buffered events, oldest first (not removed)."""
        return list(self._events)

    async def wait_event(
        self,
        name: str,
        *,
        timeout: float,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Take the oldest buffered event ``name`` (that satisfies ``match``),
        waiting for it up to ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self._events:
                    if event.get("event") == name and (match is None or match(event)):
                        self._events.remove(event)
                        return event
                if self._closed is not None:
                    raise self._closed
                self._event_added.clear()
                await self._event_added.wait()
