"""Running commands in a sandbox: foreground (streamed), background, attach, stdin, signals."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ...core.agent_client import Started
from ...errors import ProcessNotFound
from ..deps import Auth, Ctx
from ..schemas import CommandBody, ProcessListOut, ProcessOut, SignalBody
from ..streaming import ndjson_events

__all__ = ["router"]

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/commands", tags=["commands"])
NDJSON = "application/x-ndjson"


@router.post(
    "",
    responses={
        200: {"description": "NDJSON event stream (foreground)", "content": {NDJSON: {}}},
        201: {"description": "The started background process", "model": ProcessOut},
    },
)
async def run_command(sandbox_id: str, body: CommandBody, ctx: Ctx, principal: Auth) -> Response:
    rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    wants_stdin = body.stdin is not None or body.keep_stdin_open
    session = await agent.exec(
        cmd=body.cmd,
        argv=body.argv,
        env={**rec.env, **body.env},
        cwd=body.cwd or rec.default_cwd,
        user=body.user or rec.default_user,
        timeout=body.timeout,
        stdin=wants_stdin,
        background=body.background,
        tag=body.tag,
    )
    try:
        first = await anext(session)  # 'started', or an error raised before any byte is sent
        if body.stdin is not None:
            await session.send_stdin(body.stdin.encode())
        if wants_stdin and not body.keep_stdin_open:
            await session.close_stdin()
    except BaseException:
        await session.detach()
        raise
    if body.background:
        await session.detach()
        pid = first.pid if isinstance(first, Started) else None
        info = next((p for p in await agent.list_processes() if p["pid"] == pid), None)
        if info is None:
            raise ProcessNotFound(f"background process {pid} is not in the agent's table")
        payload = ProcessOut.model_validate(info).model_dump(mode="json")
        return JSONResponse(payload, status_code=201)
    events = ctx.sandboxes.activity.hold(rec.id, ndjson_events(session, first))
    return StreamingResponse(events, media_type=NDJSON)


@router.get("", response_model=ProcessListOut)
async def list_processes(sandbox_id: str, ctx: Ctx, principal: Auth) -> ProcessListOut:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    processes = await agent.list_processes()
    return ProcessListOut(processes=[ProcessOut.model_validate(p) for p in processes])


@router.get("/{pid}/events", responses={200: {"content": {NDJSON: {}}}})
async def process_events(sandbox_id: str, pid: int, ctx: Ctx, principal: Auth) -> Response:
    rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    session = await agent.attach(pid)
    try:
        first = await anext(session)
    except BaseException:
        await session.detach()
        raise
    events = ctx.sandboxes.activity.hold(rec.id, ndjson_events(session, first))
    return StreamingResponse(events, media_type=NDJSON)


@router.post("/{pid}/stdin", status_code=204, response_class=Response)
async def process_stdin(
    sandbox_id: str, pid: int, request: Request, ctx: Ctx, principal: Auth, eof: bool = False
) -> Response:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    data = await request.body()
    await agent.write_stdin(pid, data, eof=eof)
    return Response(status_code=204)


@router.post("/{pid}/signal", status_code=204, response_class=Response)
async def process_signal(
    sandbox_id: str, pid: int, body: SignalBody, ctx: Ctx, principal: Auth
) -> Response:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    await agent.signal(pid, body.signal)
    return Response(status_code=204)
