"""e2b's control-plane REST API (``E2B_API_URL`` = ``<server>/e2b``) over :class:`SandboxService`.

The ``X-API-KEY`` header carries an Atelier API token. Errors leave through
the app's normal handlers as ``{"code", "message"}`` with the error's status,
which the e2b SDK turns into its own exceptions (404 → ``NotFoundException``
or ``SandboxNotFoundException``, 401 → ``AuthenticationException``, others →
``SandboxException("<status>: <message>")``). e2b endpoints Atelier does not
serve answer 501 with a message naming the feature. See docs/e2b.md.
"""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..api.deps import AppContext, get_context
from ..api.schemas import SandboxCreate
from ..core.auth import Principal
from ..core.models import CreateRequest, SandboxState
from ..errors import InvalidRequest
from ..network import NetworkPolicy
from ..store.repository import utcnow
from .mapping import listed_sandbox, sandbox_created, sandbox_detail, template_for

__all__ = ["PREFIX", "router"]

PREFIX = "/e2b"
DEFAULT_TIMEOUT = 300  # seconds, e2b's default sandbox timeout
router = APIRouter(prefix=PREFIX, include_in_schema=False)
_LISTABLE = {
    "running": [SandboxState.RUNNING],
    "paused": [SandboxState.PAUSED, SandboxState.STOPPED],
}
# fields of e2b's NewSandbox that need a feature Atelier does not have
_UNSUPPORTED_CREATE = {
    "mcp": "MCP gateways",
    "volumeMounts": "volume mounts",
    "iam": "workload identity (iam)",
    "network": "per-sandbox egress rules (network)",
}


class Caller:
    """The authenticated caller and the raw key (handed back as envd access token)."""

    def __init__(self, principal: Principal, key: str) -> None:
        self.principal = principal
        self.key = key


async def get_caller(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> Caller:
    ctx = get_context(request)
    key = x_api_key or ""
    return Caller(await ctx.tokens.authenticate(key or None), key)


Ctx = Annotated[AppContext, Depends(get_context)]
Auth = Annotated[Caller, Depends(get_caller)]


class NewSandbox(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    template_id: str = Field(alias="templateID", min_length=1, max_length=200)
    timeout: int | None = Field(None, gt=0)
    metadata: dict[str, str] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict, alias="envVars")
    allow_internet_access: bool | None = None
    auto_pause: bool | None = Field(None, alias="autoPause")


class TimeoutIn(BaseModel):
    timeout: int = Field(gt=0)


class ConnectIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    timeout: int | None = Field(None, gt=0)


def _unsupported(feature: str) -> JSONResponse:
    return JSONResponse(
        {"code": 501, "message": f"{feature} is not supported by Atelier's e2b adapter"},
        status_code=501,
    )


@router.post("/sandboxes", status_code=201)
@router.post("/v2/sandboxes", status_code=201)
async def create_sandbox(body: NewSandbox, ctx: Ctx, caller: Auth) -> Any:
    extra = body.model_extra or {}
    for field, feature in _UNSUPPORTED_CREATE.items():
        if extra.get(field):
            return _unsupported(feature)
    if body.auto_pause:
        return _unsupported("auto-pause on timeout")
    network = NetworkPolicy(mode="none") if body.allow_internet_access is False else None
    shape = SandboxCreate(  # Atelier's defaults for what e2b does not say
        template=template_for(body.template_id, ctx.settings.default_template),
        env=body.env_vars,
        labels=body.metadata,
        timeout=body.timeout if body.timeout is not None else DEFAULT_TIMEOUT,
    )
    req = CreateRequest(
        template=shape.template,
        runtime=None,
        vcpus=shape.vcpus,
        memory_mib=shape.memory_mib,
        disk_mib=shape.disk_mib,
        env=shape.env,
        labels=shape.labels,
        timeout=shape.timeout,
        network=network,
    )
    rec = await ctx.sandboxes.create(caller.principal, req)
    return sandbox_created(rec, caller.key)


def _metadata_filter(raw: str | None) -> dict[str, str]:
    """e2b's ``metadata`` query: ``k=v&k2=v2`` with each key and value URL-quoted."""
    if not raw:
        return {}
    return {
        urllib.parse.unquote(k): urllib.parse.unquote(v)
        for k, v in urllib.parse.parse_qsl(raw, keep_blank_values=True)
    }


async def _list(
    ctx: AppContext,
    caller: Caller,
    metadata: str | None,
    states: list[str],
    started_after: datetime | None = None,
    template: str | None = None,
    order: str | None = None,
) -> list[dict[str, Any]]:
    wanted: list[SandboxState] = []
    for state in states or ["running", "paused"]:
        for part in state.split(","):
            if part not in _LISTABLE:
                raise InvalidRequest(f"unknown sandbox state {part!r}: use running or paused")
            wanted += _LISTABLE[part]
    records = await ctx.sandboxes.list(
        caller.principal, states=wanted, labels=_metadata_filter(metadata)
    )
    if template:
        records = [r for r in records if r.template == template]
    if started_after is not None:
        if started_after.tzinfo is None:
            started_after = started_after.replace(tzinfo=UTC)
        records = [r for r in records if (r.started_at or r.created_at) >= started_after]
    records.sort(key=lambda r: r.started_at or r.created_at, reverse=order != "asc")
    return [listed_sandbox(r) for r in records]


@router.get("/v2/sandboxes")
async def list_sandboxes_v2(
    ctx: Ctx,
    caller: Auth,
    metadata: str | None = None,
    state: Annotated[list[str] | None, Query()] = None,
    started_after: Annotated[datetime | None, Query(alias="startedAfter")] = None,
    template: str | None = None,
    order: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> Any:
    """One page holding every match (no ``x-next-token``): Atelier lists are small."""
    items = await _list(ctx, caller, metadata, state or [], started_after, template, order)
    return items[:limit] if limit else items


@router.get("/sandboxes")
async def list_sandboxes_v1(ctx: Ctx, caller: Auth, metadata: str | None = None) -> Any:
    return await _list(ctx, caller, metadata, ["running"])


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, ctx: Ctx, caller: Auth) -> Any:
    return sandbox_detail(await ctx.sandboxes.get(caller.principal, sandbox_id), caller.key)


@router.delete("/sandboxes/{sandbox_id}", status_code=204, response_class=Response)
async def kill_sandbox(sandbox_id: str, ctx: Ctx, caller: Auth) -> Response:
    await ctx.sandboxes.delete(caller.principal, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204, response_class=Response)
async def set_timeout(sandbox_id: str, body: TimeoutIn, ctx: Ctx, caller: Auth) -> Response:
    await ctx.sandboxes.set_timeout(caller.principal, sandbox_id, body.timeout)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/refreshes", status_code=204, response_class=Response)
async def refresh(sandbox_id: str, ctx: Ctx, caller: Auth) -> Response:
    """Keep-alive: restarts the sandbox's timeout from now."""
    rec = await ctx.sandboxes.get(caller.principal, sandbox_id)
    await ctx.sandboxes.set_timeout(caller.principal, sandbox_id, rec.timeout)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204, response_class=Response)
async def pause(sandbox_id: str, ctx: Ctx, caller: Auth) -> Response:
    await ctx.sandboxes.pause(caller.principal, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/connect")
@router.post("/v2/sandboxes/{sandbox_id}/connect")
@router.post("/sandboxes/{sandbox_id}/resume")
async def connect(sandbox_id: str, body: ConnectIn, ctx: Ctx, caller: Auth) -> Any:
    """Make the sandbox run (resume a paused one, start a stopped one); a longer
    ``timeout`` extends it, a shorter one is ignored (as e2b does)."""
    rec = await ctx.sandboxes.get(caller.principal, sandbox_id)
    status = 200
    if rec.state == SandboxState.PAUSED:
        rec, status = await ctx.sandboxes.resume(caller.principal, sandbox_id), 201
    elif rec.state != SandboxState.RUNNING:
        rec, status = await ctx.sandboxes.start(caller.principal, sandbox_id), 201
    if body.timeout is not None:
        remaining = (rec.expires_at - utcnow()).total_seconds() if rec.expires_at else None
        if remaining is not None and body.timeout > remaining:
            rec = await ctx.sandboxes.set_timeout(caller.principal, sandbox_id, body.timeout)
    return JSONResponse(sandbox_created(rec, caller.key), status_code=status)


@router.api_route(
    "/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], response_class=Response
)
async def not_served(rest: str, request: Request, caller: Auth) -> Response:
    """Templates, snapshots, volumes, metrics, logs...: named in the 501 message."""
    return _unsupported(f"{request.method} /{rest}")
