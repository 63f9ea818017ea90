"""The app in process on :class:`fakes.HibernatingRuntime`, for the unit tests of
hibernation, the idle policy and snapshots (tests/unit/core/test_*)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes import HibernatingRuntime, ProcessRuntime

from atelier.api.app import create_app
from atelier.api.deps import AppContext
from atelier.config import Settings

__all__ = ["Harness", "HibernatingRuntime", "ProcessRuntime", "harness", "ready_template"]


@dataclass
class Harness:
    app: FastAPI
    http: httpx.AsyncClient
    runtime: HibernatingRuntime
    settings: Settings

    @property
    def ctx(self) -> AppContext:
        ctx: AppContext = self.app.state.ctx
        return ctx

    async def create(self, **body: Any) -> dict[str, Any]:
        r = await self.http.post("/v1/sandboxes", json=body)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data

    async def exec(self, sandbox_id: str, cmd: str) -> httpx.Response:
        return await self.http.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": cmd})

    async def state(self, sandbox_id: str) -> str:
        r = await self.http.get(f"/v1/sandboxes/{sandbox_id}")
        assert r.status_code == 200, r.text
        return str(r.json()["state"])

    async def events(self, sandbox_id: str) -> list[str]:
        r = await self.http.get(f"/v1/sandboxes/{sandbox_id}/events")
        return [e["kind"] for e in r.json()["events"]]


def ready_template(settings: Settings, name: str = "base") -> None:
    tdir = settings.templates_dir / name
    (tdir / "rootfs").mkdir(parents=True)
    (tdir / "manifest.json").write_text(json.dumps({"name": name, "runtime": "gvisor"}))


@asynccontextmanager
async def harness(
    tmp_path: Path, runtime: ProcessRuntime | None = None, **settings: Any
) -> AsyncIterator[Harness]:
    config = Settings(
        data_dir=tmp_path / "data",
        pool_size=0,
        preboot=False,  # the fake can snapshot: keep pre-booting out of these tests
        reconcile_interval=60,
        idle_check_interval=3600,  # the tests call IdlePolicy.tick themselves
        **settings,
    )
    ready_template(config)
    rt = runtime or HibernatingRuntime(tmp_path / "sandboxes")
    app = create_app(config, runtimes=[rt])
    async with app.router.lifespan_context(app):
        token = config.admin_token_file.read_text().strip()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://atelier.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as http:
            try:
                yield Harness(app, http, rt, config)  # type: ignore[arg-type]
            finally:
                for sid in list(rt.procs):
                    await rt.destroy(sid)
