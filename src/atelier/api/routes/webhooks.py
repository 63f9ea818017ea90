"""Push webhooks from git hosts: no API token; each delivery is authenticated
by its host's signature (or token) against the prebuild's webhook secret."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..deps import Ctx
from ..prebuild_schemas import BuildOut, WebhookOut

__all__ = ["router"]

router = APIRouter(tags=["prebuilds"])


@router.post("/v1/webhooks/{provider}/{prebuild_id}", response_model=WebhookOut)
async def receive_webhook(
    provider: str, prebuild_id: str, request: Request, ctx: Ctx
) -> WebhookOut:
    """``github``, ``gitlab``, ``gitea``, ``forgejo`` or ``bitbucket``. ``401
    webhook_signature_invalid``: unsigned or badly signed; ``409
    webhook_replayed``: a delivery id seen before; ``404``: no such prebuild
    or webhook. A push to another branch (or another event) is ``ignored``; a
    commit that has a build already is a ``duplicate``."""
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    outcome = await ctx.prebuilds.webhook(provider, prebuild_id, headers, body)
    build = BuildOut(**outcome.build.to_json()) if outcome.build is not None else None
    return WebhookOut(status=outcome.status, reason=outcome.reason, build=build)
