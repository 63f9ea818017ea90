"""``sandbox.ports``: listening ports, preview URLs and port forwarding.

::

    sb.commands.run("python3 -m http.server 3000", background=True)
    sb.ports.list()                       # [PortInfo(port=3000, ...)]
    sb.ports.expose(3000, "public")       # anyone with the URL may open it
    sb.ports.link(3000, ttl=600).url      # a signed link to a private port
    with sb.ports.forward(8080, 3000):    # 127.0.0.1:8080 → port 3000 in the sandbox
        httpx.get("http://127.0.0.1:8080/")

Forwarding opens one WebSocket tunnel (``/v1/sandboxes/{id}/ports/{port}/tunnel``)
per accepted local connection, so it works for any TCP protocol and for
sandboxes without network.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

from atelier.errors import ApiConnectionError, AtelierError, PortUnreachable, from_payload
from atelier.sdk._base import (
    CONNECT_TIMEOUT,
    USER_AGENT,
    Call,
    ConnectionConfig,
    NdjsonDecoder,
    StreamCall,
    ws_handshake_error,
)
from atelier.sdk._http import AsyncHttp, AsyncResponseStream, ResponseStream, SyncHttp

__all__ = [
    "AsyncPorts",
    "PortEvent",
    "PortForward",
    "PortInfo",
    "PortUnreachable",
    "Ports",
    "PreviewLink",
    "TunnelServer",
    "Visibility",
    "open_tunnel",
]

Visibility = Literal["private", "public"]


@dataclass(frozen=True)
class PortInfo:
    port: int
    addresses: list[str]
    pid: int | None
    command: str | None
    visibility: Visibility
    url: str
    path_url: str
    host_url: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortInfo:
        return cls(
            port=int(data["port"]),
            addresses=list(data.get("addresses") or []),
            pid=data.get("pid"),
            command=data.get("command"),
            visibility=data.get("visibility", "private"),
            url=str(data["url"]),
            path_url=str(data["path_url"]),
            host_url=data.get("host_url"),
        )


@dataclass(frozen=True)
class PortEvent:
    """``type`` is ``ready`` (``ports`` holds the current listeners), ``opened`` or ``closed``."""

    type: str
    port: int | None = None
    address: str | None = None
    pid: int | None = None
    command: str | None = None
    ports: tuple[int, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortEvent:
        if data.get("type") == "error":
            raise from_payload(data)
        if data.get("type") == "ready":
            return cls("ready", ports=tuple(sorted({int(p["port"]) for p in data["ports"]})))
        return cls(
            str(data["type"]),
            port=int(data["port"]),
            address=data.get("address"),
            pid=data.get("pid"),
            command=data.get("command"),
        )


@dataclass(frozen=True)
class PreviewLink:
    url: str
    path_url: str
    host_url: str | None
    expires_at: datetime


# -- request descriptions -----------------------------------------------------------------
def _path(sandbox_id: str, suffix: str = "") -> str:
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}/ports{suffix}"


def _list_call(sandbox_id: str) -> Call[builtins.list[PortInfo]]:
    return Call(
        "GET",
        _path(sandbox_id),
        lambda r: [PortInfo.from_json(p) for p in r.json()["ports"]],
    )


def _expose_call(sandbox_id: str, port: int, visibility: Visibility) -> Call[str]:
    return Call(
        "PUT",
        _path(sandbox_id, f"/{int(port)}"),
        lambda r: str(r.json()["url"]),
        json={"visibility": visibility},
    )


def _url_call(sandbox_id: str, port: int) -> Call[str]:
    # The list has the URL of listening ports; others get the path-based form.
    return Call("GET", _path(sandbox_id), lambda r: _url_from(r, port))


def _url_from(response: httpx.Response, port: int) -> str:
    for item in response.json()["ports"]:
        if int(item["port"]) == port:
            return str(item["url"])
    # Not listening (yet): derive the path-based URL from a listed one's shape.
    base = str(response.request.url).split("/v1/sandboxes/", 1)[0]
    sandbox_id = str(response.request.url).split("/v1/sandboxes/", 1)[1].split("/", 1)[0]
    return f"{base}/preview/{sandbox_id}/{port}/"


def _link_call(sandbox_id: str, port: int, ttl: float) -> Call[PreviewLink]:
    def parse(r: httpx.Response) -> PreviewLink:
        data = r.json()
        return PreviewLink(
            url=data["url"],
            path_url=data["path_url"],
            host_url=data.get("host_url"),
            expires_at=datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00")),
        )

    return Call(
        "POST",
        _path(sandbox_id, f"/{int(port)}/links"),
        parse,
        json={"ttl_seconds": max(int(ttl), 1)},
    )


def _events_call(sandbox_id: str) -> StreamCall[PortEvent]:
    return StreamCall(
        "GET", _path(sandbox_id, "/events"), lambda: NdjsonDecoder(PortEvent.from_json)
    )


# -- tunnels (asyncio; the sync API runs them on a background thread) ---------------------
async def open_tunnel(config: ConnectionConfig, sandbox_id: str, port: int) -> Any:
    """A connected tunnel WebSocket to ``port`` in the sandbox (errors raised here)."""
    from websockets.asyncio.client import connect

    url = config.ws_url(_path(sandbox_id, f"/{int(port)}/tunnel"), [])
    try:
        ws = await connect(
            url,
            additional_headers=config.auth_headers,
            user_agent_header=USER_AGENT,
            open_timeout=CONNECT_TIMEOUT,
            max_size=None,
            compression=None,
        )
    except Exception as exc:
        raise ws_handshake_error(exc) from exc
    first = await ws.recv()
    control = json.loads(first) if isinstance(first, str) else {}
    if control.get("type") != "connected":
        await ws.close()
        if control.get("type") == "error":
            raise from_payload(control)
        raise ApiConnectionError(f"unexpected first tunnel message: {first!r}")
    return ws


async def _pipe(
    config: ConnectionConfig,
    sandbox_id: str,
    port: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    on_error: Callable[[BaseException], None] | None,
) -> None:
    """Relay one local connection through one tunnel, half-closes included."""
    try:
        ws = await open_tunnel(config, sandbox_id, port)
    except AtelierError as exc:
        if on_error is not None:
            on_error(exc)
        writer.close()
        return

    async def up() -> None:
        while data := await reader.read(256 * 1024):
            await ws.send(data)
        await ws.send('{"type":"eof"}')

    async def down() -> None:
        async for message in ws:
            if isinstance(message, bytes):
                writer.write(message)
                await writer.drain()
            elif json.loads(message).get("type") == "eof" and writer.can_write_eof():
                writer.write_eof()

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    try:
        # down() ends when the server closes the WebSocket (both sides finished,
        # or an error); up() ending is only a half-close.
        await tasks[1]
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await ws.close()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class TunnelServer:
    """A local listener forwarding each connection to a port in the sandbox."""

    def __init__(
        self,
        config: ConnectionConfig,
        sandbox_id: str,
        remote_port: int,
        local_port: int = 0,
        host: str = "127.0.0.1",
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._config = config
        self._sandbox_id = sandbox_id
        self.remote_port = remote_port
        self._requested = (host, local_port)
        self._on_error = on_error
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.local_port = local_port

    async def start(self) -> Self:
        host, port = self._requested
        self._server = await asyncio.start_server(self._accept, host, port)
        self.local_port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await _pipe(
                self._config, self._sandbox_id, self.remote_port, reader, writer, self._on_error
            )
        finally:
            self._conns.discard(task)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> Self:
        return await self.start() if self._server is None else self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class PortForward:
    """A :class:`TunnelServer` on a background thread (the sync API); ``close()`` stops it."""

    def __init__(self, config: ConnectionConfig, sandbox_id: str, local: int, remote: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = TunnelServer(config, sandbox_id, remote, local)
        future = asyncio.run_coroutine_threadsafe(self._server.start(), self._loop)
        try:
            future.result(timeout=30)
        except BaseException:
            self._stop_loop()
            raise
        self.local_port = self._server.local_port
        self.remote_port = remote

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._server.aclose(), self._loop).result(timeout=10)
        self._stop_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- the public classes -----------------------------------------------------------------------
class _PortsBase:
    def __init__(self, config: ConnectionConfig, sandbox_id: str) -> None:
        self._config = config
        self._sandbox_id = sandbox_id


class Ports(_PortsBase):
    """Ports of one sandbox (``sandbox.ports``)."""

    def __init__(self, http: SyncHttp, sandbox_id: str) -> None:
        super().__init__(http.config, sandbox_id)
        self._http = http

    def list(self) -> builtins.list[PortInfo]:
        """TCP ports listening inside the sandbox, with their preview URLs."""
        return self._http.call(_list_call(self._sandbox_id))

    def expose(self, port: int, visibility: Visibility = "public") -> str:
        """Set the port's preview visibility; returns its preview URL."""
        return self._http.call(_expose_call(self._sandbox_id, port, visibility))

    def link(self, port: int, ttl: float = 3600) -> PreviewLink:
        """A signed preview link to a private port, valid for ``ttl`` seconds."""
        return self._http.call(_link_call(self._sandbox_id, port, ttl))

    def url(self, port: int) -> str:
        """The preview URL of ``port`` (needs the owner's token or a link unless public)."""
        return self._http.call(_url_call(self._sandbox_id, port))

    def watch(self) -> ResponseStream[PortEvent]:
        """``ready`` (current ports), then ``opened``/``closed`` events until closed."""
        return self._http.stream(_events_call(self._sandbox_id))

    def forward(self, local_port: int, remote_port: int) -> PortForward:
        """Listen on ``127.0.0.1:local_port`` (0 = any free port) and forward to the sandbox."""
        return PortForward(self._config, self._sandbox_id, local_port, remote_port)


class AsyncPorts(_PortsBase):
    """The async mirror of :class:`Ports`."""

    def __init__(self, http: AsyncHttp, sandbox_id: str) -> None:
        super().__init__(http.config, sandbox_id)
        self._http = http

    async def list(self) -> builtins.list[PortInfo]:
        return await self._http.call(_list_call(self._sandbox_id))

    async def expose(self, port: int, visibility: Visibility = "public") -> str:
        return await self._http.call(_expose_call(self._sandbox_id, port, visibility))

    async def link(self, port: int, ttl: float = 3600) -> PreviewLink:
        return await self._http.call(_link_call(self._sandbox_id, port, ttl))

    async def url(self, port: int) -> str:
        return await self._http.call(_url_call(self._sandbox_id, port))

    def watch(self) -> AsyncResponseStream[PortEvent]:
        return self._http.stream(_events_call(self._sandbox_id))

    def forward(self, local_port: int, remote_port: int) -> TunnelServer:
        """``async with sb.ports.forward(8080, 3000) as fwd:`` (``fwd.local_port``)."""
        return TunnelServer(self._config, self._sandbox_id, remote_port, local_port)
