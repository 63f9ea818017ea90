"""Listening ports, port visibility, signed preview links and raw TCP tunnels."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ...core.agent_client import ListeningPort, TcpTunnel
from ...errors import AtelierError
from ..deps import AppContext, Auth, Ctx, authenticate_websocket
from ..preview import PORT_LABEL_PREFIX, PreviewState, preview_state, visibility_of

__all__ = ["router"]

router = APIRouter(tags=["ports"])
PortP = Annotated[int, Path(ge=1, le=65535, description="TCP port inside the sandbox")]
Visibility = Literal["private", "public"]
_CLOSE_FOR_STATUS = {401: 1008, 403: 1008, 404: 4404, 409: 4409, 502: 4502}
_label_locks: dict[str, asyncio.Lock] = {}


# -- schemas ------------------------------------------------------------------------
class PortOut(BaseModel):
    port: int
    addresses: list[str] = Field(description="Addresses it listens on (0.0.0.0, ::, 127.0.0.1)")
    pid: int | None = Field(None, description="The listening process, if visible")
    command: str | None = None
    visibility: Visibility
    url: str = Field(description="The preview URL (host-based if configured, else path-based)")
    path_url: str
    host_url: str | None = None


class PortsOut(BaseModel):
    ports: list[PortOut]


class VisibilityBody(BaseModel):
    visibility: Visibility


class PortVisibilityOut(BaseModel):
    port: int
    visibility: Visibility
    url: str
    path_url: str
    host_url: str | None = None


class LinkBody(BaseModel):
    ttl_seconds: int = Field(3600, ge=1, le=30 * 86400, description="Seconds the link is valid")


class LinkOut(BaseModel):
    url: str
    path_url: str
    host_url: str | None = None
    expires_at: datetime


# -- helpers ----------------------------------------------------------------------------
def _urls(
    request: Request, state: PreviewState, sandbox_id: str, port: int
) -> tuple[str, str, str | None]:
    path_url = state.path_url(str(request.base_url), sandbox_id, port)
    host_url = state.host_url(request.url.scheme, sandbox_id, port)
    return host_url or path_url, path_url, host_url


def _group(
    ports: list[ListeningPort],
    labels: dict[str, str],
    request: Request,
    state: PreviewState,
    sandbox_id: str,
) -> list[PortOut]:
    by_port: dict[int, list[ListeningPort]] = {}
    for p in ports:
        by_port.setdefault(p["port"], []).append(p)
    out = []
    for port, items in sorted(by_port.items()):
        url, path_url, host_url = _urls(request, state, sandbox_id, port)
        owner = next((i for i in items if i.get("pid") is not None), items[0])
        out.append(
            PortOut(
                port=port,
                addresses=sorted({i["address"] for i in items}),
                pid=owner.get("pid"),
                command=owner.get("command"),
                visibility=visibility_of(labels, port),
                url=url,
                path_url=path_url,
                host_url=host_url,
            )
        )
    return out


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


# -- routes -------------------------------------------------------------------------------
@router.get("/v1/sandboxes/{sandbox_id}/ports", response_model=PortsOut)
async def list_ports(sandbox_id: str, request: Request, ctx: Ctx, principal: Auth) -> PortsOut:
    rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    ports = await agent.list_ports()
    state = preview_state(request.app)
    return PortsOut(ports=_group(ports, rec.labels, request, state, rec.id))


@router.get(
    "/v1/sandboxes/{sandbox_id}/ports/events",
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def port_events(
    sandbox_id: str, request: Request, ctx: Ctx, principal: Auth, interval: float = 0.5
) -> Response:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    watch = agent.watch_ports(interval=max(interval, 0.1))
    ready = await watch.ready()

    async def lines() -> AsyncIterator[bytes]:
        try:
            yield _line({"type": "ready", "ports": [_public(p) for p in ready]})
            async for event in watch:
                yield _line({"type": event["type"], **_public(event)})
        except AtelierError as exc:
            yield _line({"type": "error", **exc.to_payload()})
        finally:
            with contextlib.suppress(Exception):
                await watch.aclose()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _public(p: Any) -> dict[str, Any]:
    return {k: p.get(k) for k in ("port", "address", "family", "pid", "command")}


@router.put("/v1/sandboxes/{sandbox_id}/ports/{port}", response_model=PortVisibilityOut)
async def set_visibility(
    sandbox_id: str, port: PortP, body: VisibilityBody, request: Request, ctx: Ctx, principal: Auth
) -> PortVisibilityOut:
    """Make a port's preview ``public`` (no auth) or ``private`` (the default)."""
    rec = await ctx.sandboxes.get(principal, sandbox_id)
    key = f"{PORT_LABEL_PREFIX}{port}"
    async with _label_locks.setdefault(rec.id, asyncio.Lock()):
        rec = await ctx.repo.get_sandbox(rec.id)
        labels = dict(rec.labels)
        if body.visibility == "public":
            labels[key] = "public"
        else:
            labels.pop(key, None)
        if labels != rec.labels:
            rec = await ctx.repo.update_sandbox(rec.id, labels=labels)
    state = preview_state(request.app)
    state.forget(rec.id)
    url, path_url, host_url = _urls(request, state, rec.id, port)
    return PortVisibilityOut(
        port=port,
        visibility=visibility_of(rec.labels, port),
        url=url,
        path_url=path_url,
        host_url=host_url,
    )


@router.post(
    "/v1/sandboxes/{sandbox_id}/ports/{port}/links", response_model=LinkOut, status_code=201
)
async def create_link(
    sandbox_id: str, port: PortP, body: LinkBody, request: Request, ctx: Ctx, principal: Auth
) -> LinkOut:
    """A signed preview URL for a private port that works without a token until it expires."""
    rec = await ctx.sandboxes.get(principal, sandbox_id)
    state = preview_state(request.app)
    grant = state.signer.issue("l", rec.id, port, body.ttl_seconds)
    expires = int(grant.split(".")[1])
    _, path_url, host_url = _urls(request, state, rec.id, port)
    query = f"?atelier_link={grant}"
    return LinkOut(
        url=(host_url or path_url) + query,
        path_url=path_url + query,
        host_url=host_url + query if host_url else None,
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


@router.websocket("/v1/sandboxes/{sandbox_id}/ports/{port}/tunnel")
async def tunnel_socket(ws: WebSocket, sandbox_id: str, port: int) -> None:
    """Raw TCP to ``127.0.0.1:<port>`` inside the sandbox over a WebSocket.

    Binary frames are the connection's bytes, both ways. Text frames are JSON
    control: the server sends ``{"type": "connected"}`` first, ``{"type":
    "eof"}`` when the sandbox side finished sending, or ``{"type": "error",
    "code", "message"}`` before closing; the client sends ``{"type": "eof"}``
    to half-close. The WebSocket closes once both directions ended.
    """
    ctx: AppContext = ws.app.state.ctx
    try:
        if not 1 <= port <= 65535:
            from ...errors import InvalidRequest

            raise InvalidRequest(f"port must be between 1 and 65535, got {port}")
        principal = await authenticate_websocket(ws)
        rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
        tunnel = await agent.open_tunnel(port)
    except AtelierError as exc:
        await ws.accept()
        await ws.send_text(json.dumps({"type": "error", **exc.to_payload()}))
        await ws.close(code=_CLOSE_FOR_STATUS.get(exc.status, 1011), reason=exc.code)
        return
    try:
        with ctx.sandboxes.activity.attached(rec.id):  # not idle while the tunnel is open
            await ws.accept()
            await ws.send_text('{"type":"connected"}')
            await _relay(ws, tunnel)
    finally:
        await tunnel.close()


async def _relay(ws: WebSocket, tunnel: TcpTunnel) -> None:
    loop = asyncio.get_running_loop()
    down = loop.create_task(_tunnel_to_ws(ws, tunnel))
    up = loop.create_task(_ws_to_tunnel(ws, tunnel))
    try:
        pending: set[asyncio.Task[bool]] = {down, up}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.cancelled() or t.exception() is not None or not t.result() for t in done):
                break  # a side went away (not a clean half-close)
        else:
            with contextlib.suppress(Exception):
                await ws.close(code=1000)
    finally:
        for task in (down, up):
            task.cancel()
        for task in (down, up):
            with contextlib.suppress(BaseException):
                await task


async def _tunnel_to_ws(ws: WebSocket, tunnel: TcpTunnel) -> bool:
    while data := await tunnel.read():
        await ws.send_bytes(data)
    await ws.send_text('{"type":"eof"}')
    return True


async def _ws_to_tunnel(ws: WebSocket, tunnel: TcpTunnel) -> bool:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return False
            if message.get("bytes") is not None:
                await tunnel.write(message["bytes"])
            elif message.get("text") is not None:
                with contextlib.suppress(ValueError):
                    if json.loads(message["text"]).get("type") == "eof":
                        await tunnel.write_eof()
                        return True
    return False
