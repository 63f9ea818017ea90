"""A drop-in backend for the official ``e2b`` SDK: its REST API and its envd daemon.

``install_e2b(app)`` adds the REST control plane under ``/e2b`` and routes
requests that carry e2b's sandbox headers (or a ``<port>-<sandbox>.<domain>``
host) to the envd adapter. Both are thin layers over
:class:`~atelier.core.service.SandboxService` and the agent client. See
docs/e2b.md and docs/adr/0020-e2b-compatibility-adapter.md.
"""

from __future__ import annotations

from fastapi import FastAPI

from ..api.deps import AppContext
from .envd import EnvdRouter, EnvdServices, build_envd_app
from .rest import PREFIX, router

__all__ = ["PREFIX", "install_e2b"]


def install_e2b(app: FastAPI) -> EnvdServices:
    """Register the adapter on ``app``; close the returned services on shutdown."""

    def context() -> AppContext:
        ctx: AppContext = app.state.ctx
        return ctx

    services = EnvdServices()
    app.include_router(router)
    app.add_middleware(EnvdRouter, envd=build_envd_app(context, services))
    app.state.e2b = services
    return services
