"""Prebuilds: configurations, their builds (history, logs) and manual runs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from ...core.prebuilds import BuildState, PrebuildBuild, PrebuildConfig, PrebuildSpec
from ...errors import InvalidRequest
from ..deps import Auth, Ctx
from ..prebuild_schemas import (
    BuildList,
    BuildOut,
    PrebuildCreate,
    PrebuildList,
    PrebuildOut,
    PrebuildRunOut,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/prebuilds", tags=["prebuilds"])


def _build(build: PrebuildBuild) -> BuildOut:
    return BuildOut(**build.to_json())


async def _config(ctx: Ctx, config: PrebuildConfig) -> PrebuildOut:
    data = config.to_json()
    if config.webhook_provider:
        data["webhook_path"] = f"/v1/webhooks/{config.webhook_provider}/{config.id}"
    ready = await ctx.prebuilds.store.list_builds(config.id, [BuildState.READY])
    data["latest_ready"] = _build(ready[0]) if ready else None
    return PrebuildOut(**data)


@router.post("", status_code=201, response_model=PrebuildOut)
async def add_prebuild(body: PrebuildCreate, ctx: Ctx, principal: Auth) -> PrebuildOut:
    """Keep ``repo``'s ``branch`` prebuilt. Nothing is built until a trigger:
    a push webhook (``webhook_path``), a poll (``poll_interval``) or ``run``."""
    config = await ctx.prebuilds.add(principal, PrebuildSpec(**body.model_dump()))
    return await _config(ctx, config)


@router.get("", response_model=PrebuildList)
async def list_prebuilds(ctx: Ctx, principal: Auth) -> PrebuildList:
    configs = await ctx.prebuilds.list(principal)
    return PrebuildList(prebuilds=[await _config(ctx, c) for c in configs])


@router.get("/{prebuild_id}", response_model=PrebuildOut)
async def get_prebuild(prebuild_id: str, ctx: Ctx, principal: Auth) -> PrebuildOut:
    return await _config(ctx, await ctx.prebuilds.get(principal, prebuild_id))


@router.delete("/{prebuild_id}", status_code=204, response_class=Response)
async def delete_prebuild(prebuild_id: str, ctx: Ctx, principal: Auth) -> Response:
    """Remove the configuration and its snapshots (a snapshot a workspace still
    uses is kept until that workspace is deleted; ``snapshot ls`` shows it)."""
    await ctx.prebuilds.delete(principal, prebuild_id)
    return Response(status_code=204)


@router.get("/{prebuild_id}/builds", response_model=BuildList)
async def list_builds(prebuild_id: str, ctx: Ctx, principal: Auth) -> BuildList:
    """Newest first: one per commit, with state, timings and snapshot."""
    builds = await ctx.prebuilds.builds(principal, prebuild_id)
    return BuildList(builds=[_build(b) for b in builds])


@router.get("/{prebuild_id}/builds/{build_id}", response_model=BuildOut)
async def get_build(prebuild_id: str, build_id: str, ctx: Ctx, principal: Auth) -> BuildOut:
    return _build(await ctx.prebuilds.build(principal, prebuild_id, build_id))


async def _as_text(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in lines:
        for raw in chunk.splitlines():
            item = json.loads(raw)
            if "line" in item:
                yield f"{item['at']} {item['line']}\n".encode()
            else:
                error = (item.get("error") or {}).get("message")
                yield f"== {item.get('state')}{': ' + error if error else ''}\n".encode()


@router.get(
    "/{prebuild_id}/builds/{build_id}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/plain": {}}}},
)
async def build_logs(
    prebuild_id: str,
    build_id: str,
    ctx: Ctx,
    principal: Auth,
    follow: Annotated[bool, Query(description="stream until the build ends")] = False,
    format: Annotated[str, Query(pattern="^(ndjson|text)$")] = "ndjson",
) -> StreamingResponse:
    """The build's log: NDJSON ``{"at", "line"}`` then ``{"state", "error"?}``
    (the operation's log), or plain text with ``format=text``."""
    build = await ctx.prebuilds.build(principal, prebuild_id, build_id)
    if build.operation_id is None:
        raise InvalidRequest(f"build {build_id} has no log")
    stream = ctx.operations.stream_logs(build.operation_id, follow=follow)
    if format == "text":
        return StreamingResponse(_as_text(stream), media_type="text/plain")
    return StreamingResponse(stream, media_type="application/x-ndjson")


@router.post("/{prebuild_id}/run", status_code=202, response_model=PrebuildRunOut)
async def run_prebuild(prebuild_id: str, ctx: Ctx, principal: Auth) -> PrebuildRunOut:
    """Build the branch's current head now (once per commit: an existing build
    is returned with ``created: false``; a failed one is tried again)."""
    build, created = await ctx.prebuilds.run(principal, prebuild_id)
    return PrebuildRunOut(build=_build(build), created=created)
