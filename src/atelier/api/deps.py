"""FastAPI dependencies: the application context and the calling principal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, WebSocket

from ..config import Settings
from ..core.auth import Principal, TokenService
from ..core.pool import WarmPool
from ..core.prebuilds import PrebuildService
from ..core.secrets import SecretService
from ..core.service import SandboxService
from ..core.snapshots import SnapshotService
from ..core.workspaces.service import WorkspaceService
from ..images.store import TemplateStore
from ..operations import OperationManager, TemplateOperations
from ..runtimes.registry import RuntimeRegistry
from ..store.repository import Repository

__all__ = ["AppContext", "Auth", "Ctx", "authenticate_websocket", "bearer_token"]


@dataclass
class AppContext:
    settings: Settings
    repo: Repository
    tokens: TokenService
    sandboxes: SandboxService
    templates: TemplateStore
    runtimes: RuntimeRegistry
    pool: WarmPool
    workspaces: WorkspaceService
    operations: OperationManager
    template_ops: TemplateOperations
    secrets: SecretService
    prebuilds: PrebuildService  # core/prebuilds

    @property
    def snapshots(self) -> SnapshotService:
        """Snapshots and forks (owned by the sandbox service): core/snapshots.py."""
        return self.sandboxes.snapshots


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def get_principal(request: Request) -> Principal:
    ctx = get_context(request)
    return await ctx.tokens.authenticate(bearer_token(request.headers.get("authorization")))


async def authenticate_websocket(ws: WebSocket) -> Principal:
    ctx: AppContext = ws.app.state.ctx
    token = bearer_token(ws.headers.get("authorization")) or ws.query_params.get("token")
    return await ctx.tokens.authenticate(token)


Ctx = Annotated[AppContext, Depends(get_context)]
Auth = Annotated[Principal, Depends(get_principal)]
