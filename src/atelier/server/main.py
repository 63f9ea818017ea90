"""Run the API server with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from ..api.app import create_app
from ..config import Settings

__all__ = ["serve"]


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings, reap_sandboxes=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
        # asyncio, not uvloop: uvloop reserves SIGCHLD, which the sandbox reaper needs
        loop="asyncio",
        http="httptools",
    )
