"""File access inside a sandbox: streamed read/write, listing, metadata, watch."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from ..deps import Auth, Ctx
from ..schemas import (
    ChmodBody,
    ExistsOut,
    FileInfoOut,
    FileListOut,
    MkdirBody,
    MkdirOut,
    RenameBody,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])
PathQ = Annotated[str, Query(min_length=1, description="Absolute path inside the sandbox")]
MODE_PATTERN = r"^0?[0-7]{3,4}$"


@router.get("", responses={200: {"content": {"application/octet-stream": {}}}})
async def read_file(sandbox_id: str, path: PathQ, ctx: Ctx, principal: Auth) -> Response:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    size, chunks = await agent.read_file(path)
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )


@router.put("", response_model=FileInfoOut)
async def write_file(
    sandbox_id: str,
    path: PathQ,
    request: Request,
    ctx: Ctx,
    principal: Auth,
    mode: Annotated[str | None, Query(pattern=MODE_PATTERN)] = None,
    user: str | None = None,
) -> FileInfoOut:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    info = await agent.write_file(path, request.stream(), mode=mode, user=user)
    return FileInfoOut.model_validate(info)


@router.delete("", status_code=204, response_class=Response)
async def remove(
    sandbox_id: str, path: PathQ, ctx: Ctx, principal: Auth, recursive: bool = False
) -> Response:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    await agent.remove(path, recursive=recursive)
    return Response(status_code=204)


@router.get("/list", response_model=FileListOut)
async def list_dir(
    sandbox_id: str,
    path: PathQ,
    ctx: Ctx,
    principal: Auth,
    depth: Annotated[int, Query(ge=1, le=32)] = 1,
) -> FileListOut:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    entries = await agent.list_dir(path, depth=depth)
    return FileListOut(entries=[FileInfoOut.model_validate(e) for e in entries])


@router.get("/stat", response_model=FileInfoOut)
async def stat(sandbox_id: str, path: PathQ, ctx: Ctx, principal: Auth) -> FileInfoOut:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    return FileInfoOut.model_validate(await agent.stat(path))


@router.get("/exists", response_model=ExistsOut)
async def exists(sandbox_id: str, path: PathQ, ctx: Ctx, principal: Auth) -> ExistsOut:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    return ExistsOut(exists=await agent.exists(path))


@router.post("/mkdir", response_model=MkdirOut)
async def mkdir(sandbox_id: str, body: MkdirBody, ctx: Ctx, principal: Auth) -> MkdirOut:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    result = await agent.mkdir(body.path, parents=body.parents, mode=body.mode, user=body.user)
    return MkdirOut.model_validate(result)


@router.post("/rename", response_model=FileInfoOut)
async def rename(sandbox_id: str, body: RenameBody, ctx: Ctx, principal: Auth) -> FileInfoOut:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    return FileInfoOut.model_validate(await agent.rename(body.source, body.destination))


@router.post("/chmod", response_model=FileInfoOut)
async def chmod(sandbox_id: str, body: ChmodBody, ctx: Ctx, principal: Auth) -> FileInfoOut:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    return FileInfoOut.model_validate(await agent.chmod(body.path, body.mode))


@router.get("/watch", responses={200: {"content": {"application/x-ndjson": {}}}})
async def watch(
    sandbox_id: str, path: PathQ, ctx: Ctx, principal: Auth, recursive: bool = False
) -> Response:
    _, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    events = agent.watch(path, recursive=recursive)
    await events.ready()  # raises (e.g. file_not_found) before the response starts

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield _line(
                    {"type": event["event"], "path": event["path"], "is_dir": event["is_dir"]}
                )
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"
