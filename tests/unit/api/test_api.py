"""The API in process: every response checked against the checked-in OpenAPI document."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from api_harness import Api

from atelier.api.openapi import openapi_document

OPENAPI = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


@cache
def document() -> dict[str, Any]:
    return json.loads(OPENAPI.read_text())


def validate(response: httpx.Response, path: str, method: str) -> None:
    """Check status and JSON body against the operation's declared responses."""
    op = document()["paths"][path][method]
    status = str(response.status_code)
    declared = op["responses"].get(status)
    assert declared is not None, f"{method} {path}: status {status} is not declared"
    content = declared.get("content", {}).get("application/json")
    if content and content.get("schema"):
        schema = {**content["schema"], "components": document()["components"]}
        jsonschema.Draft202012Validator(schema).validate(response.json())
    if response.status_code >= 400:
        body = response.json()
        assert set(body) <= {"code", "message", "details"} and body["code"] and body["message"]


def test_checked_in_openapi_matches_the_app() -> None:
    generated = json.loads(json.dumps(openapi_document(), sort_keys=True))
    assert generated == document(), "docs/openapi.json is stale: run `make openapi`"


async def test_health_needs_no_token(api: Api) -> None:
    r = await api.http.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200
    validate(r, "/healthz", "get")


async def test_lifecycle_over_http(api: Api) -> None:
    r = await api.http.post("/v1/sandboxes", json={"labels": {"a": "b"}, "env": {"K": "V"}})
    assert r.status_code == 201, r.text
    validate(r, "/v1/sandboxes", "post")
    sid = r.json()["id"]
    r = await api.http.get("/v1/sandboxes", params={"label": "a=b"})
    validate(r, "/v1/sandboxes", "get")
    assert [s["id"] for s in r.json()["sandboxes"]] == [sid]
    r = await api.http.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "echo $K"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[0]["type"] == "started"
    assert {"type": "stdout", "data": "V\n"} in lines
    assert lines[-1] == {"type": "exit", "exit_code": 0, "signal": None, "timed_out": False}
    r = await api.http.post(f"/v1/sandboxes/{sid}/stop")
    validate(r, "/v1/sandboxes/{sandbox_id}/stop", "post")
    assert r.json()["state"] == "stopped"
    r = await api.http.post(f"/v1/sandboxes/{sid}/stop")
    assert r.status_code == 409 and r.json()["code"] == "invalid_state"
    validate(r, "/v1/sandboxes/{sandbox_id}/stop", "post")
    r = await api.http.post(f"/v1/sandboxes/{sid}/start")
    assert r.json()["state"] == "running"
    r = await api.http.delete(f"/v1/sandboxes/{sid}")
    assert r.status_code == 204
    r = await api.http.get(f"/v1/sandboxes/{sid}")
    assert r.status_code == 404 and r.json()["code"] == "sandbox_not_found"
    validate(r, "/v1/sandboxes/{sandbox_id}", "get")


async def test_failed_create_leaves_nothing(api: Api) -> None:
    api.runtime.fail_on.add("start")
    r = await api.http.post("/v1/sandboxes", json={})
    assert r.status_code == 500 and r.json()["code"] == "runtime_error"
    assert "injected start failure" in r.json()["message"]
    assert (await api.http.get("/v1/sandboxes")).json()["sandboxes"] == []
    assert await api.runtime.list_ids() == []
    assert ("destroy", api.runtime.calls[0][1]) in api.runtime.calls


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"template": "nope"}, 404, "template_not_found"),
        ({"vcpus": 99}, 400, "invalid_request"),
        ({"memory_mib": -1}, 422, "validation_error"),
        ({"timeout": 0}, 422, "validation_error"),
        ({"runtime": "qemu"}, 503, "runtime_unavailable"),
    ],
)
async def test_create_rejects_bad_input(
    api: Api, body: dict[str, Any], status: int, code: str
) -> None:
    r = await api.http.post("/v1/sandboxes", json=body)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    validate(r, "/v1/sandboxes", "post")
    assert api.runtime.calls == []  # rejected before anything was made


async def test_files_and_errors_over_http(api: Api) -> None:
    sid = (await api.http.post("/v1/sandboxes", json={})).json()["id"]
    base = f"/v1/sandboxes/{sid}/files"
    target = str(api.runtime.root / "scratch" / "f.txt")
    r = await api.http.put(base, params={"path": target}, content=b"data")
    assert r.status_code == 200 and r.json()["size"] == 4
    r = await api.http.get(base, params={"path": target})
    assert r.content == b"data"
    r = await api.http.get(base, params={"path": "relative"})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_path")
    r = await api.http.get(f"{base}/stat", params={"path": target + ".missing"})
    assert (r.status_code, r.json()["code"]) == (404, "file_not_found")
    validate(r, "/v1/sandboxes/{sandbox_id}/files/stat", "get")
    r = await api.http.post(f"{base}/chmod", json={"path": target, "mode": "999"})
    assert r.status_code == 422


async def test_timeouts_stop_sandboxes(api: Api) -> None:
    sid = (await api.http.post("/v1/sandboxes", json={"timeout": 1})).json()["id"]
    import asyncio

    for _ in range(100):
        state = (await api.http.get(f"/v1/sandboxes/{sid}")).json()["state"]
        if state == "stopped":
            break
        await asyncio.sleep(0.1)
    assert state == "stopped"


async def test_audit_trail_records_who_did_what(api: Api) -> None:
    sid = (await api.http.post("/v1/sandboxes", json={})).json()["id"]
    await api.http.delete(f"/v1/sandboxes/{sid}")
    ctx = api.app.state.ctx
    events = await ctx.repo.events(sid)
    assert [e["kind"] for e in events] == ["create", "delete"]
    assert all(e["actor"] not in (None, "system") for e in events)


async def test_audit_trail_is_readable_by_owner_and_admin(api: Api) -> None:
    sid = (await api.http.post("/v1/sandboxes", json={})).json()["id"]
    await api.http.post(f"/v1/sandboxes/{sid}/stop")
    r = await api.http.get(f"/v1/sandboxes/{sid}/events")
    validate(r, "/v1/sandboxes/{sandbox_id}/events", "get")
    assert [e["kind"] for e in r.json()["events"]] == ["create", "stop"]
    r = await api.http.get("/v1/events")
    validate(r, "/v1/events", "get")
    assert {"create", "stop"} <= {e["kind"] for e in r.json()["events"]}
    created = (await api.http.post("/v1/tokens", json={"name": "dev"})).json()
    other = {"Authorization": f"Bearer {created['token']}"}
    r = await api.http.get("/v1/events", headers=other)
    assert r.status_code == 403
    r = await api.http.get(f"/v1/sandboxes/{sid}/events", headers=other)
    assert r.status_code == 404  # not theirs: not even its existence is revealed
