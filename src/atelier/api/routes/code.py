"""The code interpreter: stateful cells (python, javascript, bash) and their contexts.

See docs/interpreter.md. The request and answer models live here, not in
``api/schemas.py``: they belong to this route alone.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ...interpreter import CellStream, InterpreterService
from ...interpreter.events import DEFAULT_TIMEOUT, MAX_TIMEOUT
from ..deps import Auth, Ctx

__all__ = [
    "CodeBody",
    "CodeContextBody",
    "CodeContextListOut",
    "CodeContextOut",
    "interpreter_service",
    "router",
]

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/code", tags=["code"])
NDJSON = "application/x-ndjson"
Language = Literal["python", "javascript", "bash"]
CONTEXT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ContextName = Annotated[str, Path(pattern=CONTEXT_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeBody(_Body):
    code: str = Field(max_length=8 * 1024 * 1024)
    language: Language = "python"
    context: str | None = Field(
        None,
        pattern=CONTEXT_PATTERN,
        description="The context (kernel) to run in; default: the language's own, named "
        "after it. A new name creates the context.",
    )
    timeout: float | None = Field(
        DEFAULT_TIMEOUT,
        gt=0,
        le=MAX_TIMEOUT,
        description="Seconds; then the kernel is interrupted (state kept). null = no limit.",
    )


class CodeContextBody(_Body):
    language: Language = "python"
    name: str | None = Field(None, pattern=CONTEXT_PATTERN)
    cwd: str | None = Field(None, description="Working directory (default: the user's home)")


class CodeContextOut(BaseModel):
    name: str
    language: str
    cwd: str
    created_at: str
    execution_count: int
    alive: bool


class CodeContextListOut(BaseModel):
    contexts: list[CodeContextOut]


def interpreter_service(request: Request) -> InterpreterService:
    """The app's one :class:`InterpreterService` (made on first use)."""
    service = getattr(request.app.state, "interpreter", None)
    if service is None:
        service = request.app.state.interpreter = InterpreterService()
    return service


Interpreter = Annotated[InterpreterService, Depends(interpreter_service)]


async def _ndjson(cell: CellStream) -> AsyncIterator[bytes]:
    try:
        async for event in cell:
            yield json.dumps(event, separators=(",", ":")).encode() + b"\n"
    finally:
        with contextlib.suppress(Exception):
            await cell.aclose()


@router.post(
    "",
    response_class=StreamingResponse,
    responses={200: {"description": "NDJSON events of the cell", "content": {NDJSON: {}}}},
)
async def run_code(
    sandbox_id: str, body: CodeBody, ctx: Ctx, principal: Auth, interpreter: Interpreter
) -> Response:
    rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    cell = await interpreter.execute(
        rec, agent, body.code, language=body.language, context=body.context, timeout=body.timeout
    )
    events = ctx.sandboxes.activity.hold(rec.id, _ndjson(cell))  # not idle while it runs
    return StreamingResponse(events, media_type=NDJSON)


@router.get("/contexts", response_model=CodeContextListOut)
async def list_contexts(
    sandbox_id: str, ctx: Ctx, principal: Auth, interpreter: Interpreter
) -> CodeContextListOut:
    rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    contexts = await interpreter.list_contexts(rec, agent)
    return CodeContextListOut(contexts=[CodeContextOut.model_validate(c) for c in contexts])


@router.post("/contexts", status_code=201, response_model=CodeContextOut)
async def create_context(
    sandbox_id: str, body: CodeContextBody, ctx: Ctx, principal: Auth, interpreter: Interpreter
) -> Any:
    rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    info = await interpreter.create_context(
        rec, agent, language=body.language, name=body.name, cwd=body.cwd
    )
    return CodeContextOut.model_validate(info)


@router.post("/contexts/{name}/restart", response_model=CodeContextOut)
async def restart_context(
    sandbox_id: str, name: ContextName, ctx: Ctx, principal: Auth, interpreter: Interpreter
) -> Any:
    rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    return CodeContextOut.model_validate(await interpreter.restart_context(rec, agent, name))


@router.delete("/contexts/{name}", status_code=204, response_class=Response)
async def delete_context(
    sandbox_id: str, name: ContextName, ctx: Ctx, principal: Auth, interpreter: Interpreter
) -> Response:
    rec, agent = await ctx.sandboxes.agent(principal, sandbox_id)
    await interpreter.delete_context(rec, agent, name)
    return Response(status_code=204)
