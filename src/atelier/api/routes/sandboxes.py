"""Sandbox lifecycle routes."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse

from ...core.models import CreateRequest, SandboxState
from ...errors import InvalidRequest
from ..deps import Auth, Ctx
from ..lifecycle_schemas import AutoStopIn, ForkBody, SnapshotCreate, SnapshotOut
from ..schemas import (
    ClientEventIn,
    EventList,
    EventOut,
    SandboxCreate,
    SandboxList,
    SandboxOut,
    TimeoutBody,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])
MAX_CLIENT_EVENT_BYTES = 8192


def parse_labels(raw: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"label filter {item!r} must look like key=value")
        labels[key] = value
    return labels


@router.post("", status_code=201, response_model=SandboxOut)
async def create_sandbox(body: SandboxCreate, ctx: Ctx, principal: Auth) -> SandboxOut:
    shape = {"vcpus": body.vcpus, "memory_mib": body.memory_mib, "disk_mib": body.disk_mib}
    template, env = body.template, body.env
    if body.snapshot is not None:  # its template; its shape and env unless given
        snap = await ctx.snapshots.get(principal, body.snapshot)
        given = body.model_fields_set
        template = body.template if "template" in given else snap.template
        shape = {k: v if k in given else getattr(snap, k) for k, v in shape.items()}
        env = {**snap.env, **body.env}
    req = CreateRequest(
        template=template,
        runtime=body.runtime,
        env=env,
        labels=body.labels,
        timeout=body.timeout,
        network=body.network.policy() if body.network else None,
        snapshot=body.snapshot,
        auto_stop=body.auto_stop.policy() if body.auto_stop else None,
        **shape,
    )
    return SandboxOut.of(await ctx.sandboxes.create(principal, req))


@router.get("", response_model=SandboxList)
async def list_sandboxes(
    ctx: Ctx,
    principal: Auth,
    state: Annotated[list[SandboxState] | None, Query()] = None,
    label: Annotated[list[str] | None, Query(description="key=value, repeatable")] = None,
) -> SandboxList:
    records = await ctx.sandboxes.list(principal, states=state, labels=parse_labels(label or []))
    return SandboxList(sandboxes=[SandboxOut.of(r) for r in records])


@router.get("/{sandbox_id}", response_model=SandboxOut)
async def get_sandbox(sandbox_id: str, ctx: Ctx, principal: Auth) -> SandboxOut:
    rec = await ctx.sandboxes.get(principal, sandbox_id)
    return SandboxOut.of(rec, ctx.sandboxes.runtime_info(rec))


@router.delete("/{sandbox_id}", status_code=204, response_class=Response)
async def delete_sandbox(sandbox_id: str, ctx: Ctx, principal: Auth) -> Response:
    await ctx.sandboxes.delete(principal, sandbox_id)
    return Response(status_code=204)


@router.post("/{sandbox_id}/stop", response_model=SandboxOut)
async def stop_sandbox(sandbox_id: str, ctx: Ctx, principal: Auth) -> SandboxOut:
    return SandboxOut.of(await ctx.sandboxes.stop(principal, sandbox_id))


@router.post("/{sandbox_id}/start", response_model=SandboxOut)
async def start_sandbox(sandbox_id: str, ctx: Ctx, principal: Auth) -> SandboxOut:
    rec = await ctx.sandboxes.start(principal, sandbox_id)
    if rec.workspace:
        await ctx.workspaces.after_start(rec)  # postStartCommand, postAttachCommand
        rec = await ctx.sandboxes.get(principal, sandbox_id)
    return SandboxOut.of(rec)


@router.post("/{sandbox_id}/pause", response_model=SandboxOut)
async def pause_sandbox(sandbox_id: str, ctx: Ctx, principal: Auth) -> SandboxOut:
    """Freeze the sandbox's processes, keeping memory (needs the PAUSE capability)."""
    return SandboxOut.of(await ctx.sandboxes.pause(principal, sandbox_id))


@router.post("/{sandbox_id}/resume", response_model=SandboxOut)
async def resume_sandbox(sandbox_id: str, ctx: Ctx, principal: Auth) -> SandboxOut:
    return SandboxOut.of(await ctx.sandboxes.resume(principal, sandbox_id))


@router.post("/{sandbox_id}/hibernate", response_model=SandboxOut)
async def hibernate_sandbox(sandbox_id: str, ctx: Ctx, principal: Auth) -> SandboxOut:
    """Save memory to disk and free RAM (needs the HIBERNATE capability); the
    sandbox wakes by itself on the next call that needs it."""
    return SandboxOut.of(await ctx.sandboxes.hibernate(principal, sandbox_id))


@router.post("/{sandbox_id}/wake", response_model=SandboxOut)
async def wake_sandbox(sandbox_id: str, ctx: Ctx, principal: Auth) -> SandboxOut:
    """Bring a hibernated or paused sandbox back (a running one is returned as is)."""
    return SandboxOut.of(await ctx.sandboxes.wake(principal, sandbox_id))


@router.put("/{sandbox_id}/auto-stop", response_model=SandboxOut)
async def set_auto_stop(sandbox_id: str, body: AutoStopIn, ctx: Ctx, principal: Auth) -> SandboxOut:
    """Replace the idle policy (all fields null: never auto-stop)."""
    return SandboxOut.of(await ctx.sandboxes.set_auto_stop(principal, sandbox_id, body.policy()))


@router.post("/{sandbox_id}/snapshots", status_code=201, response_model=SnapshotOut)
async def snapshot_sandbox(
    sandbox_id: str, body: SnapshotCreate, ctx: Ctx, principal: Auth
) -> SnapshotOut:
    """Save the sandbox's files (and memory) as a snapshot; it keeps running."""
    snap = await ctx.snapshots.create(
        principal, sandbox_id, name=body.name, labels=body.labels, memory=body.memory
    )
    return SnapshotOut.of(snap)


@router.post("/{sandbox_id}/fork", status_code=201, response_model=SandboxList)
async def fork_sandbox(sandbox_id: str, body: ForkBody, ctx: Ctx, principal: Auth) -> SandboxList:
    """``count`` copies of the sandbox, files and (where possible) memory; all or none."""
    records = await ctx.snapshots.fork(principal, sandbox_id, body.count)
    return SandboxList(sandboxes=[SandboxOut.of(r) for r in records])


@router.post("/{sandbox_id}/timeout", response_model=SandboxOut)
async def set_timeout(sandbox_id: str, body: TimeoutBody, ctx: Ctx, principal: Auth) -> SandboxOut:
    return SandboxOut.of(await ctx.sandboxes.set_timeout(principal, sandbox_id, body.timeout))


@router.get("/{sandbox_id}/logs", response_class=PlainTextResponse)
async def sandbox_logs(
    sandbox_id: str, ctx: Ctx, principal: Auth, tail: Annotated[int | None, Query(ge=1)] = None
) -> PlainTextResponse:
    return PlainTextResponse(await ctx.sandboxes.logs(principal, sandbox_id, tail))


@router.get("/{sandbox_id}/events", response_model=EventList)
async def sandbox_events(
    sandbox_id: str,
    ctx: Ctx,
    principal: Auth,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> EventList:
    """The sandbox's audit trail (oldest first)."""
    await ctx.sandboxes.get(principal, sandbox_id)  # ownership check
    events = await ctx.repo.events(sandbox_id, limit=limit)
    return EventList(events=[EventOut.model_validate(e) for e in events])


@router.post("/{sandbox_id}/events", status_code=204, response_class=Response)
async def add_sandbox_event(
    sandbox_id: str, body: ClientEventIn, ctx: Ctx, principal: Auth
) -> Response:
    """Append a client's entry (e.g. an MCP tool call) to the sandbox's audit trail,
    as ``client.<kind>`` with the caller's token as actor; lifecycle kinds cannot
    be forged."""
    await ctx.sandboxes.get(principal, sandbox_id)  # ownership check
    if len(json.dumps(body.detail, default=str)) > MAX_CLIENT_EVENT_BYTES:
        raise InvalidRequest(f"an event's detail is limited to {MAX_CLIENT_EVENT_BYTES} bytes")
    await ctx.repo.record_event(
        f"client.{body.kind}", sandbox_id, principal.token_id, **body.detail
    )
    return Response(status_code=204)
