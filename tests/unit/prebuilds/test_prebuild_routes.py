"""The prebuild and webhook routes over HTTP, in process (the app with a fake
runtime: nothing here builds; the integration tests do)."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes import ProcessRuntime

from atelier.api.app import create_app
from atelier.config import Settings

SECRET = "route-secret"
REPO = "https://git.example.com/team/app.git"


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data_dir=tmp_path / "data", pool_size=0)
    tdir = settings.templates_dir / "base"
    (tdir / "rootfs").mkdir(parents=True)
    (tdir / "manifest.json").write_text(json.dumps({"name": "base", "runtime": "gvisor"}))
    app = create_app(settings, runtimes=[ProcessRuntime(tmp_path / "sandboxes")])
    async with app.router.lifespan_context(app):
        token = settings.admin_token_file.read_text().strip()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://atelier.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield client


def _signed(body: bytes, delivery: str) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Authorization": "",
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
    }


async def test_configurations_over_http(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/prebuilds",
        json={
            "repo": REPO,
            "branch": "main",
            "webhook_provider": "github",
            "webhook_secret": SECRET,
            "keep": 2,
        },
    )
    assert r.status_code == 201, r.text
    config = r.json()
    assert config["webhook_path"] == f"/v1/webhooks/github/{config['id']}"
    assert config["has_webhook_secret"] and SECRET not in r.text
    assert config["latest_ready"] is None
    listed = (await http.get("/v1/prebuilds")).json()["prebuilds"]
    assert [p["id"] for p in listed] == [config["id"]]
    assert (await http.get(f"/v1/prebuilds/{config['id']}/builds")).json() == {"builds": []}
    assert (await http.get("/v1/prebuilds/pb-nothing")).json()["code"] == "prebuild_not_found"
    assert (await http.delete(f"/v1/prebuilds/{config['id']}")).status_code == 204
    assert (await http.get(f"/v1/prebuilds/{config['id']}")).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"repo": "file:///etc/passwd", "branch": "main"},
        {"repo": REPO, "branch": "main", "webhook_provider": "svn", "webhook_secret": "x"},
        {"repo": REPO, "branch": "main", "webhook_provider": "gitlab"},
        {"repo": REPO, "branch": "main", "git_secret": "no-such-secret"},
    ],
)
async def test_bad_configurations_are_refused(http: httpx.AsyncClient, body: dict) -> None:  # type: ignore[type-arg]
    r = await http.post("/v1/prebuilds", json=body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["code"] in ("invalid_request", "secret_not_found")
    assert (await http.get("/v1/prebuilds")).json()["prebuilds"] == []


async def test_webhooks_need_a_signature_and_refuse_replays(http: httpx.AsyncClient) -> None:
    config = (
        await http.post(
            "/v1/prebuilds",
            json={
                "repo": REPO,
                "branch": "main",
                "webhook_provider": "github",
                "webhook_secret": SECRET,
            },
        )
    ).json()
    path = f"/v1/webhooks/github/{config['id']}"
    body = json.dumps({"ref": "refs/heads/other", "after": "a" * 40}).encode()
    unsigned = await http.post(path, content=body, headers={"Authorization": ""})
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "webhook_signature_invalid"
    ok = await http.post(path, content=body, headers=_signed(body, "d-1"))
    assert ok.status_code == 200 and ok.json()["status"] == "ignored", ok.text
    replay = await http.post(path, content=body, headers=_signed(body, "d-1"))
    assert replay.status_code == 409 and replay.json()["code"] == "webhook_replayed"
    other = await http.post(
        f"/v1/webhooks/gitlab/{config['id']}", content=body, headers=_signed(body, "d-2")
    )
    assert other.status_code == 404
    nothing = await http.post("/v1/webhooks/github/pb-nothing", content=body)
    assert nothing.status_code == 404
