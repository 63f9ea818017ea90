"""Interactive terminals over WebSocket (binary = terminal bytes, text = JSON control)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ...core.agent_client import Exit, Output, PtySession
from ...errors import AtelierError
from ..deps import AppContext, authenticate_websocket

__all__ = ["router"]

router = APIRouter(tags=["pty"])
# WebSocket close codes: 1008 policy violation (auth), 1011 server error, 4404 not found
_CLOSE_FOR_STATUS = {401: 1008, 403: 1008, 404: 4404, 409: 4409}


@router.websocket("/v1/sandboxes/{sandbox_id}/pty")
async def pty_socket(
    ws: WebSocket,
    sandbox_id: str,
    cols: int = 80,
    rows: int = 24,
    cmd: str | None = None,
    user: str | None = None,
    cwd: str | None = None,
) -> None:
    ctx: AppContext = ws.app.state.ctx
    try:
        principal = await authenticate_websocket(ws)
        rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
        session = await agent.pty(
            cmd=cmd,
            env=dict(rec.env),
            cwd=cwd or rec.default_cwd,
            user=user or rec.default_user,
            cols=cols,
            rows=rows,
        )
    except AtelierError as exc:
        await ws.accept()
        await ws.send_text(json.dumps({"type": "error", **exc.to_payload()}))
        await ws.close(code=_CLOSE_FOR_STATUS.get(exc.status, 1011), reason=exc.code)
        return
    await ws.accept()
    with ctx.sandboxes.activity.attached(rec.id):  # not idle while the terminal is open
        await _serve(ws, session)


async def _serve(ws: WebSocket, session: PtySession) -> None:
    pump = asyncio.get_running_loop().create_task(_pump_input(ws, session))
    try:
        async for event in session:
            if isinstance(event, Output):
                await ws.send_bytes(event.data)
            elif isinstance(event, Exit):
                await ws.send_text(json.dumps({"type": "exit", "exit_code": event.exit_code}))
                break
        with contextlib.suppress(Exception):
            await ws.close()
    except WebSocketDisconnect:
        pass
    finally:
        pump.cancel()
        with contextlib.suppress(BaseException):
            await pump
        with contextlib.suppress(Exception):
            await session.close()


async def _pump_input(ws: WebSocket, session: PtySession) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                await session.close()
                return
            if message.get("bytes") is not None:
                await session.write(message["bytes"])
            elif message.get("text") is not None:
                try:
                    control = json.loads(message["text"])
                except json.JSONDecodeError:
                    continue
                if control.get("type") == "resize":
                    await session.resize(int(control["cols"]), int(control["rows"]))
                elif control.get("type") == "input":
                    await session.write(str(control.get("data", "")).encode())
