"""WebSocket previews: the client's ASGI WebSocket bridged to a WebSocket client
(``websockets``' sans-I/O protocol) that talks to the in-sandbox server over a tunnel.

Messages are relayed whole (fragments are reassembled), pings are answered on
each side by its own protocol, and a close on either side closes the other
with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ...core.agent_client import AgentClient, TcpTunnel
from ...errors import AtelierError
from .http import Forwarding, request_headers

__all__ = ["proxy_websocket"]

Scope = dict[str, Any]
_NOT_FORWARDED = (b"sec-websocket-", b"host")
_UNSENDABLE_CLOSE = {1005, 1006, 1015}


class _Bridge:
    def __init__(self, tunnel: TcpTunnel, protocol: ClientProtocol) -> None:
        self.tunnel = tunnel
        self.protocol = protocol
        self._lock = asyncio.Lock()

    async def flush(self) -> None:
        """Send what the protocol produced, in order (one writer at a time)."""
        async with self._lock:
            for data in self.protocol.data_to_send():
                if data:
                    await self.tunnel.write(data)
                else:
                    with contextlib.suppress(AtelierError):
                        await self.tunnel.write_eof()

    async def feed(self) -> tuple[list[Any], bool]:
        """Read from the tunnel into the protocol: (its new events, whether at EOF)."""
        data = await self.tunnel.read()
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        events = self.protocol.events_received()
        await self.flush()  # pongs and close replies
        return events, not data


def _subprotocols(scope: Scope) -> list[Subprotocol]:
    protocols: list[Subprotocol] = []
    for name, value in scope["headers"]:
        if name.lower() == b"sec-websocket-protocol":
            protocols += [Subprotocol(p.strip()) for p in value.decode().split(",") if p.strip()]
    return protocols


async def _deny(send: Any, scope: Scope, status: int, body: bytes) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008 if status in (401, 403) else 1011})


async def proxy_websocket(
    scope: Scope,
    receive: Any,
    send: Any,
    *,
    agent: AgentClient,
    port: int,
    fwd: Forwarding,
    target: str,
    drop_headers: tuple[bytes, ...] = (),
    strip_cookie: bytes | None = None,
    deny: Any = None,
) -> None:
    """Bridge an ASGI WebSocket to ``ws://localhost:<port><target>`` inside the sandbox."""
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    try:
        tunnel = await agent.open_tunnel(port)
    except AtelierError as exc:
        await deny(exc)
        return
    try:
        protocol = ClientProtocol(
            parse_uri(f"ws://localhost:{port}{target}"),
            subprotocols=_subprotocols(scope) or None,
            max_size=None,
        )
        request = protocol.connect()
        for name, value in request_headers(
            scope["headers"], fwd, drop=drop_headers, strip_cookie=strip_cookie
        ):
            if not name.startswith(_NOT_FORWARDED):
                request.headers[name.decode("latin-1")] = value.decode("latin-1")
        protocol.send_request(request)
        bridge = _Bridge(tunnel, protocol)
        await bridge.flush()
        pending: list[Any] = []
        response: Response | None = None
        while response is None:
            events, eof = await bridge.feed()
            if events and isinstance(events[0], Response):
                response, pending = events[0], events[1:]
            elif eof:
                break
        if response is None or protocol.handshake_exc is not None:
            status = response.status_code if response is not None else 502
            await _deny(
                send,
                scope,
                status if status >= 400 else 502,
                b'{"code":"upstream_error","message":"the server in the sandbox refused '
                b'the WebSocket handshake"}',
            )
            return
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": response.headers.get("Sec-WebSocket-Protocol"),
            }
        )
        await _relay(bridge, receive, send, pending)
    finally:
        await tunnel.close()


async def _relay(bridge: _Bridge, receive: Any, send: Any, pending: list[Any]) -> None:
    loop = asyncio.get_running_loop()
    to_server = loop.create_task(_client_to_server(bridge, receive))
    to_client = loop.create_task(_server_to_client(bridge, send, pending))
    try:
        done, _ = await asyncio.wait({to_server, to_client}, return_when=asyncio.FIRST_COMPLETED)
        if to_server in done:
            # The client left: give the server a moment to answer our close frame.
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(to_client), 2.0)
    finally:
        for task in (to_server, to_client):
            task.cancel()
        for task in (to_server, to_client):
            with contextlib.suppress(BaseException):
                await task


async def _client_to_server(bridge: _Bridge, receive: Any) -> None:
    protocol = bridge.protocol
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            if message.get("text") is not None:
                protocol.send_text(message["text"].encode())
            elif message.get("bytes") is not None:
                protocol.send_binary(message["bytes"])
            await bridge.flush()
        elif message["type"] == "websocket.disconnect":
            code = int(message.get("code") or 1000)
            with contextlib.suppress(Exception):
                protocol.send_close(1000 if code in _UNSENDABLE_CLOSE else code)
                await bridge.flush()
            return


async def _server_to_client(bridge: _Bridge, send: Any, pending: list[Any]) -> None:
    parts: list[bytes] = []
    opcode: Opcode | None = None
    events, eof = pending, False
    while True:
        for frame in events:
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                opcode, parts = frame.opcode, [bytes(frame.data)]
            elif frame.opcode is Opcode.CONT and opcode is not None:
                parts.append(bytes(frame.data))
            elif frame.opcode is Opcode.CLOSE:
                code = bridge.protocol.close_code or 1000
                await send(
                    {
                        "type": "websocket.close",
                        "code": 1000 if code in _UNSENDABLE_CLOSE else code,
                        "reason": bridge.protocol.close_reason or "",
                    }
                )
                return
            else:
                continue  # ping/pong: answered by the protocol
            if frame.fin and opcode is not None:
                data = b"".join(parts)
                if opcode is Opcode.TEXT:
                    await send({"type": "websocket.send", "text": data.decode()})
                else:
                    await send({"type": "websocket.send", "bytes": data})
                opcode, parts = None, []
        if eof:
            await send({"type": "websocket.close", "code": 1011})  # gone without a close frame
            return
        try:
            events, eof = await bridge.feed()
        except AtelierError:
            events, eof = [], True
