"""HTTP/1.1 reverse proxying through an agent tunnel, with h11 on the sandbox side.

Request and response bodies stream chunk by chunk (never buffered whole);
upstream connections are kept alive and reused per (sandbox, port) when the
in-sandbox server allows it. Hop-by-hop headers are dropped both ways and
``X-Forwarded-For/Proto/Host/Prefix`` are set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h11

from ...core.agent_client import AgentClient, TcpTunnel
from ...errors import AtelierError, UpstreamFailure

__all__ = [
    "HOP_BY_HOP",
    "Forwarding",
    "Upstream",
    "proxy_http",
    "request_headers",
    "response_headers",
]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_MAX_HEADERS = 64 * 1024
Headers = list[tuple[bytes, bytes]]
Scope = dict[str, Any]


@dataclass(frozen=True)
class Forwarding:
    """Where the request came from, for ``X-Forwarded-*`` and ``Location`` rewriting."""

    client_ip: str | None
    proto: str  # http / https
    host: str | None  # the Host the client used
    prefix: str  # "/preview/<id>/<port>" (path-based) or "" (host-based)
    port: int


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    fwd: Forwarding,
    *,
    drop: Iterable[bytes] = (),
    strip_cookie: bytes | None = None,
    chunked: bool = False,
) -> Headers:
    """Headers to send upstream: hop-by-hop and ``drop`` removed, ``X-Forwarded-*`` set.

    ``strip_cookie`` removes that cookie (the proxy's own) from ``Cookie``.
    ``Host`` becomes ``localhost:<port>`` (dev servers often refuse unknown
    hosts); the client's ``Host`` goes in ``X-Forwarded-Host``.
    """
    items = list(headers)
    hop = HOP_BY_HOP | _connection_tokens(items) | {b"host", b"expect"} | set(drop)
    out: Headers = [(b"host", f"localhost:{fwd.port}".encode())]
    prior_for: bytes | None = None
    for raw_name, value in items:
        name = raw_name.lower()
        if name in hop or name.startswith(b"x-forwarded-"):
            if name == b"x-forwarded-for":
                prior_for = value
            continue
        if name == b"cookie" and strip_cookie is not None:
            kept = [
                part.strip()
                for part in value.split(b";")
                if part.strip() and part.strip().split(b"=", 1)[0] != strip_cookie
            ]
            if not kept:
                continue
            value = b"; ".join(kept)
        out.append((name, value))
    if fwd.client_ip:
        client = fwd.client_ip.encode()
        out.append((b"x-forwarded-for", prior_for + b", " + client if prior_for else client))
    out.append((b"x-forwarded-proto", fwd.proto.encode()))
    if fwd.host:
        out.append((b"x-forwarded-host", fwd.host.encode()))
    if fwd.prefix:
        out.append((b"x-forwarded-prefix", fwd.prefix.encode()))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    return out


def response_headers(headers: Iterable[tuple[bytes, bytes]], fwd: Forwarding) -> Headers:
    """Headers to send the client: hop-by-hop removed; a path-absolute ``Location``
    is moved under the preview prefix (path-based previews)."""
    items = list(headers)
    hop = HOP_BY_HOP | _connection_tokens(items)
    out: Headers = []
    for raw_name, value in items:
        name = raw_name.lower()
        if name in hop:
            continue
        if (
            name == b"location"
            and fwd.prefix
            and value.startswith(b"/")
            and not value.startswith(b"//")
        ):
            value = fwd.prefix.encode() + value
        out.append((name, value))
    return out


class Upstream:
    """One HTTP/1.1 client connection to the in-sandbox server, over a tunnel."""

    def __init__(self, tunnel: TcpTunnel) -> None:
        self.tunnel = tunnel
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEADERS)
        self.fresh = True

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            await self.tunnel.write(data)

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.tunnel.read())
                continue
            return event

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE


async def _connect(agent: AgentClient, port: int) -> Upstream:
    return Upstream(await agent.open_tunnel(port))


def _has_body(scope: Scope) -> tuple[bool, bool]:
    """(has a body, needs chunked framing upstream)."""
    length = None
    chunked = False
    for name, value in scope["headers"]:
        lname = name.lower()
        if lname == b"content-length":
            length = value
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        return length.strip() not in (b"", b"0"), False
    return chunked, chunked


async def proxy_http(
    scope: Scope,
    receive: Any,
    send: Any,
    *,
    agent: AgentClient,
    sandbox_id: str,
    port: int,
    fwd: Forwarding,
    target: str,
    pool: Any,
    extra_response_headers: Headers = (),  # type: ignore[assignment]
    drop_headers: Iterable[bytes] = (),
    strip_cookie: bytes | None = None,
) -> None:
    """Forward one ASGI HTTP request to ``localhost:<port><target>`` inside the sandbox."""
    has_body, chunked = _has_body(scope)
    headers = request_headers(
        scope["headers"], fwd, drop=drop_headers, strip_cookie=strip_cookie, chunked=chunked
    )
    request = h11.Request(method=scope["method"], target=target, headers=headers)
    upstream: Upstream | None = None
    pump: asyncio.Task[None] | None = None
    response: Any = None
    # A kept-alive connection may have been closed by the server meanwhile: a
    # request without a body is retried once on a fresh connection.
    for attempt in range(2):
        upstream = pool.take_idle(sandbox_id, port) if attempt == 0 else None
        reused = upstream is not None
        if upstream is None:
            upstream = await _connect(agent, port)
        try:
            await upstream.send(request)
            if not has_body:
                await upstream.send(h11.EndOfMessage())
            # Streams the body (if any), then watches for the client going away.
            pump = asyncio.get_running_loop().create_task(_pump(receive, upstream, has_body))
            while True:
                response = await upstream.next_event()
                if not isinstance(response, h11.InformationalResponse):
                    break
            if not isinstance(response, h11.Response):
                raise h11.RemoteProtocolError(f"unexpected event {response!r}")
            break
        except (h11.ProtocolError, AtelierError) as exc:
            await _stop(pump)
            pump = None
            await upstream.tunnel.close()
            upstream = None
            if reused and not has_body:
                continue
            raise UpstreamFailure(
                f"the server on port {port} in sandbox {sandbox_id} sent no valid response: {exc}"
            ) from exc
    assert upstream is not None
    try:
        out_headers = response_headers(response.headers, fwd) + list(extra_response_headers)
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": out_headers}
        )
        while True:
            try:
                event = await upstream.next_event()
            except (h11.RemoteProtocolError, AtelierError):
                break  # the server died mid-body: end the client's response
            if isinstance(event, h11.Data):
                await send(
                    {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                )
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await _stop(pump)
        pump = None
        if upstream.reusable and not upstream.tunnel.closed:
            upstream.h11.start_next_cycle()
            pool.put_idle(sandbox_id, port, upstream)
            upstream = None
    finally:
        await _stop(pump)
        if upstream is not None:
            await upstream.tunnel.close()


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _pump(receive: Any, upstream: Upstream, has_body: bool) -> None:
    """Client body → upstream chunk by chunk; then wait for a disconnect and abort on it."""
    while has_body:
        message = await receive()
        if message["type"] == "http.disconnect":
            await upstream.tunnel.close()
            return
        body = message.get("body", b"")
        if body:
            await upstream.send(h11.Data(data=body))
        if not message.get("more_body", False):
            await upstream.send(h11.EndOfMessage())
            break
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            await upstream.tunnel.close()
            return
