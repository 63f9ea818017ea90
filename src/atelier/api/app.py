"""The FastAPI application and its lifespan (start-up recovery, background loops)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .. import __version__
from ..config import Settings
from ..core.agents import AgentConnections
from ..core.auth import TokenService
from ..core.idle import IdlePolicy
from ..core.pool import WarmPool
from ..core.prebuilds import PrebuildBuilder, PrebuildPoller, PrebuildService, PrebuildStore
from ..core.reconciler import Reconciler
from ..core.secrets import SecretService
from ..core.service import SandboxService
from ..core.workspaces.service import WorkspaceService
from ..e2b import install_e2b
from ..images.store import TemplateStore
from ..operations import OperationManager, TemplateOperations
from ..runtimes.base import Runtime
from ..runtimes.host import host_runtimes
from ..runtimes.registry import RuntimeRegistry
from ..server.reaper import SandboxReaper
from ..sshgw import start_gateway
from ..store.db import Database
from ..store.repository import Repository
from ..store.secrets import SecretRepository
from .deps import AppContext
from .errors import install_error_handlers
from .preview import install_preview
from .routes import code as code_routes
from .routes import commands, files, ports, pty, sandboxes, secrets, system, workspaces
from .routes import prebuilds as prebuild_routes
from .routes import snapshots as snapshot_routes
from .routes import ssh_keys as ssh_key_routes
from .routes import templates as template_routes
from .routes import webhooks as webhook_routes
from .schemas import ErrorBody

__all__ = ["create_app"]

log = logging.getLogger("atelier.server")


def create_app(
    settings: Settings | None = None,
    runtimes: list[Runtime] | None = None,
    *,
    reap_sandboxes: bool = False,
) -> FastAPI:
    """Build the app.

    ``runtimes`` replaces the host's runtimes (unit tests only);
    ``reap_sandboxes`` makes this process the subreaper of sandbox processes
    (the ``atelier server`` process only; see :mod:`atelier.server.reaper`).
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        reaper = SandboxReaper()
        if reap_sandboxes:
            reaper.start()
        db = Database(settings.effective_database_url)
        await db.migrate()
        repo = Repository(db)
        tokens = TokenService(repo)
        if await tokens.ensure_admin_token(settings.admin_token_file):
            log.warning("created the admin API token in %s", settings.admin_token_file)
        registry = RuntimeRegistry(
            runtimes if runtimes is not None else host_runtimes(settings),
            default=settings.default_runtime,
        )
        templates = TemplateStore(settings)
        agents = AgentConnections(registry)
        service = SandboxService(settings, repo, registry, templates, agents)
        pool = WarmPool(settings, service)
        service.claim_pooled = pool.claim
        reconciler = Reconciler(service, settings.reconcile_interval)
        idle_policy = IdlePolicy(service, settings.idle_check_interval)  # core/idle.py
        secret_service = SecretService(settings, SecretRepository(db))
        workspace_service = WorkspaceService(service, secret_service)
        operations = OperationManager(settings, repo)
        template_ops = TemplateOperations(settings, repo, templates, operations)
        prebuilds = PrebuildService(  # core/prebuilds, docs/prebuilds.md
            PrebuildStore(db),
            operations,
            PrebuildBuilder(workspace_service, service.snapshots, secret_service),
            service.snapshots,
            secret_service,
        )
        workspace_service.prebuilt = prebuilds
        prebuild_poller = PrebuildPoller(prebuilds)
        app.state.ctx = AppContext(
            settings,
            repo,
            tokens,
            service,
            templates,
            registry,
            pool,
            workspace_service,
            operations,
            template_ops,
            secret_service,
            prebuilds,
        )
        await operations.recover()
        await reconciler.recover()
        await workspace_service.recover()
        await prebuilds.recover()
        reconciler.start()
        idle_policy.start()
        pool.start()
        prebuild_poller.start()
        app.state.sshgw = await start_gateway(settings, db, repo, service)  # docs/ssh.md
        log.info("atelier %s serving with data dir %s", __version__, settings.data_dir)
        try:
            yield
        finally:
            await app.state.sshgw.close()
            await app.state.e2b.close()
            await prebuild_poller.stop()
            await operations.close()
            await pool.stop()
            await workspace_service.close()
            await service.preboots.close()
            await idle_policy.stop()
            await reconciler.stop()
            await agents.close_all()
            for runtime in registry.all():
                await runtime.aclose()
            await db.close()
            await reaper.stop()

    app = FastAPI(
        title="Atelier",
        version=__version__,
        description="Isolated workspaces for developers and AI agents. See docs/api.md.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (system, template_routes, sandboxes, workspaces, secrets, commands, files, pty):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(ports.router, responses=ERROR_RESPONSES)
    app.include_router(code_routes.router, responses=ERROR_RESPONSES)
    install_preview(app)
    app.include_router(ssh_key_routes.router, responses=ERROR_RESPONSES)
    app.include_router(snapshot_routes.router, responses=ERROR_RESPONSES)
    app.include_router(prebuild_routes.router, responses=ERROR_RESPONSES)
    app.include_router(webhook_routes.router, responses=ERROR_RESPONSES)
    install_e2b(app)  # the e2b SDK's REST API and envd: docs/e2b.md
    return app


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Invalid request"),
        (401, "Missing or invalid API token"),
        (403, "The token may not do this"),
        (404, "No such sandbox, snapshot, template, process or file"),
        (409, "Conflicts with the current state"),
        (422, "The request body or query failed validation"),
        (500, "A runtime or agent failed"),
        (502, "A git host or registry failed"),
        (503, "A runtime is unavailable on this host"),
    )
}
