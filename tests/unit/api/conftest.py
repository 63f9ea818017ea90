"""The real app, in process, on a runtime that runs the real agent as a host process."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from api_harness import Api, ready_template
from fakes import ProcessRuntime

from atelier.api.app import create_app
from atelier.config import Settings


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(data_dir=tmp_path / "data", pool_size=0, reconcile_interval=0.2)
    ready_template(settings)
    runtime = ProcessRuntime(tmp_path / "sandboxes")
    app = create_app(settings, runtimes=[runtime])
    async with app.router.lifespan_context(app):
        token = settings.admin_token_file.read_text().strip()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://atelier.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as http:
            yield Api(app, http, runtime, settings)
        for sid in list(runtime.procs):
            await runtime.destroy(sid)
