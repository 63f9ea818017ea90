"""Snapshot routes (taking one is ``POST /v1/sandboxes/{id}/snapshots``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ..deps import Auth, Ctx
from ..lifecycle_schemas import SnapshotList, SnapshotOut
from .sandboxes import parse_labels

__all__ = ["router"]

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


@router.get("", response_model=SnapshotList)
async def list_snapshots(
    ctx: Ctx,
    principal: Auth,
    label: Annotated[list[str] | None, Query(description="key=value, repeatable")] = None,
) -> SnapshotList:
    records = await ctx.snapshots.list(principal, labels=parse_labels(label or []))
    return SnapshotList(snapshots=[SnapshotOut.of(r) for r in records])


@router.get("/{ref}", response_model=SnapshotOut)
async def get_snapshot(ref: str, ctx: Ctx, principal: Auth) -> SnapshotOut:
    """By id or name."""
    return SnapshotOut.of(await ctx.snapshots.get(principal, ref))


@router.delete("/{ref}", status_code=204, response_class=Response)
async def delete_snapshot(ref: str, ctx: Ctx, principal: Auth) -> Response:
    """Refused with 409 ``snapshot_in_use`` while sandboxes or snapshots use it."""
    await ctx.snapshots.delete(principal, ref)
    return Response(status_code=204)
