"""Templates (list, delete, pull, build) and the operations that build them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from ...errors import InvalidRequest
from ...operations import Operation
from ...operations.upload import MAX_UPLOAD_BYTES
from ..deps import Auth, Ctx
from ..template_schemas import (
    OperationBody,
    OperationList,
    OperationOut,
    TemplateDetailList,
    TemplateDetailOut,
    TemplatePullIn,
)

__all__ = ["router"]

router = APIRouter()


def _op(op: Operation) -> OperationOut:
    return OperationOut.model_validate(op, from_attributes=True)


@router.get("/v1/templates", response_model=TemplateDetailList, tags=["templates"])
async def list_templates(ctx: Ctx, _principal: Auth) -> TemplateDetailList:
    return TemplateDetailList(
        templates=[
            TemplateDetailOut(
                name=t.name,
                runtime=t.runtime,
                ready=t.ready,
                size_bytes=t.size_bytes,
                version=t.version,
                versions=list(t.versions),
                created_at=t.created_at,
            )
            for t in ctx.templates.list()
        ]
    )


@router.delete("/v1/templates/{name}", status_code=204, response_class=Response, tags=["templates"])
async def delete_template(name: str, ctx: Ctx, principal: Auth) -> Response:
    """Delete every version (admin only); ``409 template_in_use`` with
    ``details.sandbox_ids`` while sandboxes (in any state) use it."""
    principal.require_admin()
    await ctx.template_ops.delete(name)
    await ctx.repo.record_event("template_delete", None, principal.token_id, template=name)
    return Response(status_code=204)


@router.post(
    "/v1/templates/pull", status_code=202, response_model=OperationBody, tags=["templates"]
)
async def pull_template(body: TemplatePullIn, ctx: Ctx, principal: Auth) -> OperationBody:
    """Pull an image into a new version of a template, as an operation (admin only)."""
    op = await ctx.template_ops.pull(
        principal, body.name, body.image, credentials=body.credentials, force=body.force
    )
    return OperationBody(operation=_op(op))


@router.post(
    "/v1/templates/build",
    status_code=202,
    response_model=OperationBody,
    tags=["templates"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": (
                "the build context: a tar archive, plain or gzip, at most "
                f"{MAX_UPLOAD_BYTES // 2**20} MiB"
            ),
            "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def build_template(
    request: Request,
    ctx: Ctx,
    principal: Auth,
    name: Annotated[str, Query(description="the template to build (a new version)")],
    dockerfile: Annotated[
        str, Query(description="the Dockerfile's path in the context")
    ] = "Dockerfile",
    build_arg: Annotated[list[str] | None, Query(description="K=V, repeatable")] = None,
    target: Annotated[str | None, Query(description="the stage to build")] = None,
    no_cache: Annotated[bool, Query(description="run every step again")] = False,
) -> OperationBody:
    """Build a template from a Dockerfile in the uploaded context, as an operation
    (admin only). Unsafe archives and oversized uploads are ``400``."""
    principal.require_admin()
    args: dict[str, str] = {}
    for pair in build_arg or []:
        key, eq, value = pair.partition("=")
        if not key or not eq:
            raise InvalidRequest(f"build_arg {pair!r}: use NAME=VALUE")
        args[key] = value
    op = await ctx.template_ops.build(
        principal,
        name,
        request.stream(),
        dockerfile=dockerfile,
        build_args=args,
        target=target,
        no_cache=no_cache,
    )
    return OperationBody(operation=_op(op))


@router.get("/v1/operations", response_model=OperationList, tags=["operations"])
async def list_operations(
    ctx: Ctx, principal: Auth, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> OperationList:
    """Newest first: the caller's own (an admin sees all)."""
    ops = await ctx.operations.list(principal, limit=limit)
    return OperationList(operations=[_op(op) for op in ops])


@router.get("/v1/operations/{op_id}", response_model=OperationOut, tags=["operations"])
async def get_operation(op_id: str, ctx: Ctx, principal: Auth) -> OperationOut:
    return _op(await ctx.operations.get(principal, op_id))


@router.get(
    "/v1/operations/{op_id}/logs",
    response_class=StreamingResponse,
    tags=["operations"],
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def operation_logs(
    op_id: str,
    ctx: Ctx,
    principal: Auth,
    follow: Annotated[bool, Query(description="stream until the operation ends")] = False,
) -> StreamingResponse:
    """NDJSON: ``{"at", "line"}`` per log line, then ``{"state", "error"?, "result"?}``."""
    await ctx.operations.get(principal, op_id)
    return StreamingResponse(
        ctx.operations.stream_logs(op_id, follow=follow), media_type="application/x-ndjson"
    )
