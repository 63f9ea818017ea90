"""``sandbox.pty``: interactive terminals over the PTY WebSocket.

``recv`` returns a chunk of terminal output, ``b""`` when nothing arrived
within ``timeout``, and ``None`` once the session has ended (then
``exit_code`` holds the program's exit status, if the server reported one).
When the server cannot open the terminal (unknown sandbox, bad token) it says
so in an ``error`` frame: the first ``recv`` raises the matching
:class:`atelier.errors.AtelierError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Self

from atelier.errors import ApiConnectionError
from atelier.sdk import _api as api
from atelier.sdk._base import (
    CONNECT_TIMEOUT,
    USER_AGENT,
    ConnectionConfig,
    PtyFrames,
    ws_handshake_error,
)

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection as AsyncClientConnection
    from websockets.sync.client import ClientConnection

__all__ = ["AsyncPty", "AsyncPtySession", "Pty", "PtySession"]


def _lost(exc: BaseException) -> ApiConnectionError:
    return ApiConnectionError(f"terminal connection lost: {exc}")


class PtySession:
    """One terminal: ``send`` keystrokes, ``recv``/iterate output, ``resize``, ``close``."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._frames = PtyFrames()

    @property
    def exit_code(self) -> int | None:
        """The program's exit status once the session has ended."""
        return self._frames.exit_code

    @property
    def ended(self) -> bool:
        return self._frames.ended

    def send(self, data: bytes | str) -> None:
        """Keyboard input (``str`` is sent as UTF-8)."""
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(PtyFrames.input(data))
        except ConnectionClosed as exc:
            self._frames.ended = True
            raise _lost(exc) from exc

    def resize(self, cols: int, rows: int) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(PtyFrames.resize(cols, rows))
        except ConnectionClosed as exc:
            self._frames.ended = True
            raise _lost(exc) from exc

    def recv(self, timeout: float | None = None) -> bytes | None:
        """Output bytes; ``b""`` on timeout; ``None`` when the session is over."""
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._frames.ended:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = self._ws.recv(timeout=remaining)
            except TimeoutError:
                return b""
            except ConnectionClosed as exc:
                self._frames.ended = True
                if not isinstance(exc, ConnectionClosedOK) and self.exit_code is None:
                    raise _lost(exc) from exc
                return None
            output = self._frames.handle(message)
            if output:
                return output
        return None

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.recv()) is not None:
            if chunk:
                yield chunk

    def wait(self) -> int | None:
        """Discard output until the session ends; return the exit code."""
        for _ in self:
            pass
        return self.exit_code

    def close(self) -> None:
        self._frames.ended = True
        self._ws.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Pty:
    """Terminals of one sandbox (``sandbox.pty``)."""

    def __init__(self, config: ConnectionConfig, sandbox_id: str) -> None:
        self._config = config
        self._sandbox_id = sandbox_id

    def create(
        self,
        cols: int = 80,
        rows: int = 24,
        cmd: str | None = None,
        user: str | None = None,
        cwd: str | None = None,
    ) -> PtySession:
        """Open a terminal running ``cmd`` (default: a login shell)."""
        from websockets.sync.client import connect

        path, params = api.pty_params(self._sandbox_id, cols, rows, cmd, user, cwd)
        try:
            ws = connect(
                self._config.ws_url(path, params),
                additional_headers=self._config.auth_headers,
                user_agent_header=USER_AGENT,
                open_timeout=CONNECT_TIMEOUT,
                max_size=None,
            )
        except Exception as exc:
            raise ws_handshake_error(exc) from exc
        # Entering marks the connection as managed (websockets >= 17.1 warns otherwise);
        # PtySession.close() ends it.
        return PtySession(ws.__enter__())


class AsyncPtySession:
    """The async mirror of :class:`PtySession`."""

    def __init__(self, ws: AsyncClientConnection) -> None:
        self._ws = ws
        self._frames = PtyFrames()

    @property
    def exit_code(self) -> int | None:
        return self._frames.exit_code

    @property
    def ended(self) -> bool:
        return self._frames.ended

    async def send(self, data: bytes | str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(PtyFrames.input(data))
        except ConnectionClosed as exc:
            self._frames.ended = True
            raise _lost(exc) from exc

    async def resize(self, cols: int, rows: int) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(PtyFrames.resize(cols, rows))
        except ConnectionClosed as exc:
            self._frames.ended = True
            raise _lost(exc) from exc

    async def recv(self, timeout: float | None = None) -> bytes | None:
        """Output bytes; ``b""`` on timeout; ``None`` when the session is over."""
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._frames.ended:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                message = await asyncio.wait_for(self._ws.recv(), remaining)
            except TimeoutError:
                return b""
            except ConnectionClosed as exc:
                self._frames.ended = True
                if not isinstance(exc, ConnectionClosedOK) and self.exit_code is None:
                    raise _lost(exc) from exc
                return None
            output = self._frames.handle(message)
            if output:
                return output
        return None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.recv()) is not None:
            if chunk:
                yield chunk

    async def wait(self) -> int | None:
        async for _ in self:
            pass
        return self.exit_code

    async def close(self) -> None:
        self._frames.ended = True
        await self._ws.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncPty:
    """The async mirror of :class:`Pty`."""

    def __init__(self, config: ConnectionConfig, sandbox_id: str) -> None:
        self._config = config
        self._sandbox_id = sandbox_id

    async def create(
        self,
        cols: int = 80,
        rows: int = 24,
        cmd: str | None = None,
        user: str | None = None,
        cwd: str | None = None,
    ) -> AsyncPtySession:
        from websockets.asyncio.client import connect

        path, params = api.pty_params(self._sandbox_id, cols, rows, cmd, user, cwd)
        try:
            ws = await connect(
                self._config.ws_url(path, params),
                additional_headers=self._config.auth_headers,
                user_agent_header=USER_AGENT,
                open_timeout=CONNECT_TIMEOUT,
                max_size=None,
            )
        except Exception as exc:
            raise ws_handshake_error(exc) from exc
        return AsyncPtySession(ws)
