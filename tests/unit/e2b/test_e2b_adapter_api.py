"""The e2b adapter's two wires in process, as raw HTTP (the real app and agent, on the
fake runtime that runs the agent as a host process): REST bodies and statuses, Connect
unary and streaming framing, routing by the ``E2b-Sandbox-Id`` header, auth."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes import ProcessRuntime

from atelier.api.app import create_app
from atelier.config import Settings
from atelier.e2b.connect import END_STREAM, EnvelopeReader, encode_envelope, end_stream

ROOT = {"Authorization": "Basic " + base64.b64encode(b"root:").decode()}


class Wire:
    def __init__(self, http: httpx.AsyncClient, token: str, scratch: Path) -> None:
        self.http = http
        self.token = token
        self.scratch = str(scratch)  # the agent runs on the host: files go here

    async def create(self, **body: Any) -> dict[str, Any]:
        r = await self.http.post(
            "/e2b/v2/sandboxes", json={"templateID": "base", **body}, headers=self.api
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    @property
    def api(self) -> dict[str, str]:
        return {"X-API-KEY": self.token}

    def envd(self, sandbox_id: str, **extra: str) -> dict[str, str]:
        return {"E2b-Sandbox-Id": sandbox_id, "X-Access-Token": self.token, **ROOT, **extra}

    async def unary(self, sandbox_id: str, method: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(f"/{method}", json=body, headers=self.envd(sandbox_id))

    async def stream(
        self, sandbox_id: str, method: str, body: dict[str, Any]
    ) -> list[tuple[int, dict[str, Any]]]:
        headers = self.envd(sandbox_id, **{"Content-Type": "application/connect+json"})
        r = await self.http.post(
            f"/{method}", content=encode_envelope(body) + end_stream(), headers=headers
        )
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/connect+json"
        return [(f, json.loads(d)) for f, d in EnvelopeReader().feed(r.content)]


@pytest.fixture
async def wire(tmp_path: Path) -> AsyncIterator[Wire]:
    settings = Settings(data_dir=tmp_path / "data", pool_size=0)
    tdir = settings.templates_dir / "base"
    (tdir / "rootfs").mkdir(parents=True)
    (tdir / "manifest.json").write_text(json.dumps({"name": "base", "runtime": "gvisor"}))
    runtime = ProcessRuntime(tmp_path / "sandboxes")
    app = create_app(settings, runtimes=[runtime])
    async with app.router.lifespan_context(app):
        token = settings.admin_token_file.read_text().strip()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://atelier.test") as http:
            yield Wire(http, token, tmp_path / "files")
        for sid in list(runtime.procs):
            await runtime.destroy(sid)


async def test_rest_lifecycle_bodies(wire: Wire) -> None:
    created = await wire.create(metadata={"k": "v"}, envVars={"A": "1"}, timeout=120)
    sid = created["sandboxID"]
    assert created["envdAccessToken"] == wire.token
    assert created["envdVersion"] == "0.5.7"
    info = (await wire.http.get(f"/e2b/sandboxes/{sid}", headers=wire.api)).json()
    assert (info["state"], info["metadata"], info["templateID"]) == ("running", {"k": "v"}, "base")
    listed = await wire.http.get("/e2b/v2/sandboxes", params={"metadata": "k=v"}, headers=wire.api)
    assert [s["sandboxID"] for s in listed.json()] == [sid]
    other = await wire.http.get("/e2b/v2/sandboxes", params={"metadata": "k=w"}, headers=wire.api)
    assert other.json() == []
    r = await wire.http.post(
        f"/e2b/sandboxes/{sid}/timeout", json={"timeout": 900}, headers=wire.api
    )
    assert r.status_code == 204
    r = await wire.http.post(f"/e2b/v2/sandboxes/{sid}/connect", json={}, headers=wire.api)
    assert r.status_code == 200 and r.json()["sandboxID"] == sid
    assert (await wire.http.delete(f"/e2b/sandboxes/{sid}", headers=wire.api)).status_code == 204
    assert (await wire.http.delete(f"/e2b/sandboxes/{sid}", headers=wire.api)).status_code == 404


async def test_rest_refusals(wire: Wire) -> None:
    r = await wire.http.post("/e2b/v2/sandboxes", json={"templateID": "base"})
    assert r.status_code == 401
    r = await wire.http.post(
        "/e2b/v2/sandboxes", json={"templateID": "base", "mcp": {"x": {}}}, headers=wire.api
    )
    assert r.status_code == 501 and "MCP gateways" in r.json()["message"]
    r = await wire.http.get("/e2b/templates", headers=wire.api)
    assert r.status_code == 501 and r.json()["message"].startswith("GET /templates")
    r = await wire.http.post("/e2b/v2/sandboxes", json={"templateID": "nope"}, headers=wire.api)
    assert r.status_code == 404 and "nope" in r.json()["message"]


async def test_connect_unary_and_streams(wire: Wire) -> None:
    sid = (await wire.create())["sandboxID"]
    frames = await wire.stream(
        sid,
        "process.Process/Start",
        {"process": {"cmd": "/bin/sh", "args": ["-c", "echo hi; echo no >&2; exit 4"]}},
    )
    assert "start" in frames[0][1]["event"]
    events = [body["event"] for flags, body in frames if flags != END_STREAM]
    data = [e["data"] for e in events if "data" in e]
    out = b"".join(base64.b64decode(d["stdout"]) for d in data if "stdout" in d)
    err = b"".join(base64.b64decode(d["stderr"]) for d in data if "stderr" in d)
    assert (out, err) == (b"hi\n", b"no\n")
    end = frames[-2][1]["event"]["end"]
    assert end["exitCode"] == 4 and end["exited"] is True
    assert frames[-1] == (END_STREAM, {})

    r = await wire.unary(sid, "filesystem.Filesystem/MakeDir", {"path": f"{wire.scratch}/dir"})
    assert r.status_code == 200 and r.json()["entry"]["type"] == "FILE_TYPE_DIRECTORY"
    r = await wire.unary(sid, "filesystem.Filesystem/MakeDir", {"path": f"{wire.scratch}/dir"})
    assert (r.status_code, r.json()["code"]) == (409, "already_exists")
    r = await wire.unary(sid, "filesystem.Filesystem/Stat", {"path": "/nonexistent/x"})
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = await wire.unary(
        sid, "process.Process/SendSignal", {"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"}
    )
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = await wire.unary(sid, "filesystem.Filesystem/Nope", {})
    assert (r.status_code, r.json()["code"]) == (501, "unimplemented")
    await wire.unary(sid, "filesystem.Filesystem/Remove", {"path": f"{wire.scratch}/dir"})


async def test_envd_auth_codec_and_gone_sandboxes(wire: Wire) -> None:
    sid = (await wire.create())["sandboxID"]
    r = await wire.http.post(
        "/filesystem.Filesystem/Stat",
        json={"path": "/"},
        headers={"E2b-Sandbox-Id": sid, "X-Access-Token": "wrong"},
    )
    assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
    r = await wire.http.post(
        "/filesystem.Filesystem/Stat",
        content=b"\n\x01/",
        headers={**wire.envd(sid), "Content-Type": "application/proto"},
    )
    assert r.status_code == 415
    assert (await wire.http.get("/health", headers=wire.envd(sid))).status_code == 204
    # without the header the same path is Atelier's own API (no such route)
    assert (await wire.http.get("/health")).status_code == 404
    await wire.http.delete(f"/e2b/sandboxes/{sid}", headers=wire.api)
    r = await wire.http.get("/health", headers=wire.envd(sid))
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    frames = await wire.stream(sid, "process.Process/Start", {"process": {"cmd": "true"}})
    assert frames == [
        (
            END_STREAM,
            {"error": {"code": "unavailable", "message": frames[0][1]["error"]["message"]}},
        )
    ]
    assert "was not found" in frames[0][1]["error"]["message"]


async def test_files_transfer(wire: Wire) -> None:
    sid = (await wire.create())["sandboxID"]
    files = [
        ("file", (f"{wire.scratch}/a.bin", b"\x00\x01")),
        ("file", (f"{wire.scratch}/b", b"B")),
    ]
    r = await wire.http.post("/files", files=files, headers=wire.envd(sid))
    assert r.status_code == 200
    assert [w["path"] for w in r.json()] == [f"{wire.scratch}/a.bin", f"{wire.scratch}/b"]
    r = await wire.http.post(
        "/files",
        params={"path": f"{wire.scratch}/c"},
        content=b"raw",
        headers={**wire.envd(sid), "Content-Type": "application/octet-stream"},
    )
    assert r.json() == [{"name": "c", "type": "file", "path": f"{wire.scratch}/c"}]
    r = await wire.http.get(
        "/files", params={"path": f"{wire.scratch}/a.bin"}, headers=wire.envd(sid)
    )
    assert r.content == b"\x00\x01"
    r = await wire.http.get("/files", params={"path": f"{wire.scratch}/zz"}, headers=wire.envd(sid))
    assert r.status_code == 404 and r.json()["code"] == 404
    await wire.unary(sid, "filesystem.Filesystem/Remove", {"path": wire.scratch})
