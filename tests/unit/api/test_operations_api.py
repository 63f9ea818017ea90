"""Templates and operations over HTTP, in process, with fake builders."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from api_harness import Api

import atelier.images.dockerfile as dockerfile_pkg
import atelier.operations.templates as template_ops_module
from atelier.api.deps import AppContext
from atelier.config import Settings
from atelier.errors import BuildFailed, NotFound
from atelier.images.store import TemplateInfo, TemplateStore, publish_version


def _fake_publish(settings: Settings, name: str, marker: str) -> TemplateInfo:
    work = settings.templates_dir / f".{name}.build-{marker}"
    (work / "rootfs").mkdir(parents=True)
    (work / "rootfs" / "marker").write_text(marker)
    (work / "manifest.json").write_text(json.dumps({"name": name, "runtime": "gvisor"}))
    publish_version(settings.templates_dir, name, work)
    return TemplateStore(settings).get(name)


def _ctx(api: Api) -> AppContext:
    ctx: AppContext = api.app.state.ctx
    return ctx


def _tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


async def _logs(api: Api, op_id: str, follow: bool = True) -> list[dict[str, Any]]:
    r = await api.http.get(f"/v1/operations/{op_id}/logs", params={"follow": follow})
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


@pytest.fixture
def fake_pull(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def pull(settings: Settings, name: str, image: str, **kw: Any) -> TemplateInfo:
        calls.append({"name": name, "image": image, **kw})
        if image.endswith(":missing"):
            raise NotFound(f"image {image} not found")
        for i in range(3):
            kw["on_progress"](
                type(
                    "E", (), {"phase": "download", "message": f"blob {i}", "done": i, "total": 3}
                )()
            )
        return _fake_publish(settings, name, f"pull-{len(calls)}")

    monkeypatch.setattr(template_ops_module, "pull_template", pull)
    return calls


async def test_pull_runs_as_an_operation_with_streamed_logs(
    api: Api, fake_pull: list[dict[str, Any]]
) -> None:
    r = await api.http.post(
        "/v1/templates/pull", json={"name": "tiny", "image": "alpine:3", "credentials": "u:s"}
    )
    assert r.status_code == 202, r.text
    op = r.json()["operation"]
    assert op["state"] == "running" and op["kind"] == "template.pull" and op["target"] == "tiny"
    lines = await _logs(api, op["id"])
    assert lines[-1]["state"] == "succeeded"
    assert lines[-1]["result"] == {"template": "tiny", "version": 1}
    text = [x["line"] for x in lines[:-1]]
    assert "download: blob 1 (1/3)" in text and all("at" in x for x in lines[:-1])
    assert not any("u:s" in x for x in text)
    assert fake_pull[0]["credentials"] == "u:s"
    got = (await api.http.get(f"/v1/operations/{op['id']}")).json()
    assert got["state"] == "succeeded" and got["finished_at"]
    listed = (await api.http.get("/v1/templates")).json()["templates"]
    tiny = next(t for t in listed if t["name"] == "tiny")
    assert tiny["version"] == 1 and tiny["versions"] == [1]
    ops = (await api.http.get("/v1/operations")).json()["operations"]
    assert [o["id"] for o in ops] == [op["id"]]


async def test_failed_pull_records_the_error(api: Api, fake_pull: list[dict[str, Any]]) -> None:
    r = await api.http.post("/v1/templates/pull", json={"name": "x", "image": "alpine:missing"})
    op_id = r.json()["operation"]["id"]
    end = (await _logs(api, op_id))[-1]
    assert end["state"] == "failed" and end["error"]["code"] == "not_found"
    op = (await api.http.get(f"/v1/operations/{op_id}")).json()
    assert op["error"]["message"] == "image alpine:missing not found"


async def test_bad_pull_requests_are_400(api: Api) -> None:
    r = await api.http.post("/v1/templates/pull", json={"name": "Bad Name", "image": "alpine"})
    assert r.status_code == 400
    r = await api.http.post("/v1/templates/pull", json={"name": "ok", "image": "UPPER/x::"})
    assert r.status_code == 400


async def test_templates_need_admin_and_operations_are_private(
    api: Api, fake_pull: list[dict[str, Any]]
) -> None:
    r = await api.http.post("/v1/tokens", json={"name": "user"})
    user = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await api.http.post("/v1/templates/pull", json={"name": "t", "image": "a"}, headers=user)
    assert r.status_code == 403
    r = await api.http.post("/v1/templates/build?name=t", content=b"x", headers=user)
    assert r.status_code == 403
    r = await api.http.delete("/v1/templates/base", headers=user)
    assert r.status_code == 403
    r = await api.http.post("/v1/templates/pull", json={"name": "t", "image": "a"})
    op_id = r.json()["operation"]["id"]
    await _logs(api, op_id)
    r = await api.http.get(f"/v1/operations/{op_id}", headers=user)
    assert r.status_code == 404 and r.json()["code"] == "operation_not_found"
    r = await api.http.get(f"/v1/operations/{op_id}/logs", headers=user)
    assert r.status_code == 404
    assert (await api.http.get("/v1/operations", headers=user)).json()["operations"] == []


async def test_delete_refuses_a_template_in_use_and_versions_are_pinned(api: Api) -> None:
    settings = api.settings
    _fake_publish(settings, "web", "one")
    r = await api.http.post("/v1/sandboxes", json={"template": "web"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    _fake_publish(settings, "web", "two")  # a rebuild while the sandbox lives
    ctx = _ctx(api)
    assert await ctx.template_ops.collect("web") == []  # version 1 is pinned by the sandbox
    events = (await api.http.get(f"/v1/sandboxes/{sid}/events")).json()["events"]
    create = next(e for e in events if e["kind"] == "create")
    assert create["template_version"] == 1
    r = await api.http.post(f"/v1/sandboxes/{sid}/stop")  # a stopped sandbox still uses it
    r = await api.http.delete("/v1/templates/web")
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "template_in_use" and body["details"]["sandbox_ids"] == [sid]
    assert (await api.http.delete(f"/v1/sandboxes/{sid}")).status_code == 204
    assert ctx.templates.leased("web") == set()  # released once the row pinned it
    assert await ctx.template_ops.collect("web") == [1]
    assert not (settings.templates_dir / "web/versions/1").exists()
    r = await api.http.delete("/v1/templates/web")
    assert r.status_code == 204, r.text
    assert not (settings.templates_dir / "web").exists()
    r = await api.http.delete("/v1/templates/web")
    assert r.status_code == 404 and r.json()["code"] == "template_not_found"


async def test_build_upload_runs_the_builder(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    gate = asyncio.Event()

    async def build(settings: Settings, name: str, **kw: Any) -> TemplateInfo:
        context: Path = kw["context"]
        seen.update(kw, files=sorted(p.name for p in context.iterdir()))
        kw["on_log"]("step 1/2 [1] FROM base")
        await gate.wait()
        kw["on_log"]("step 2/2 [1] COPY a.txt /a.txt")
        if kw["build_args"].get("FAIL"):
            raise BuildFailed("step 2 failed with exit code 1", details={"output": ["boom"]})
        return _fake_publish(settings, name, "built")

    monkeypatch.setattr(dockerfile_pkg, "build_dockerfile", build)
    body = _tar({"docker/Dockerfile": "FROM base\n", "a.txt": "a"})
    r = await api.http.post(
        "/v1/templates/build",
        params=[("name", "web"), ("dockerfile", "docker/Dockerfile"), ("build_arg", "A=1")],
        content=body,
    )
    assert r.status_code == 202, r.text
    op_id = r.json()["operation"]["id"]
    follower = asyncio.create_task(_logs(api, op_id))
    await asyncio.sleep(0.3)
    assert not follower.done()  # following: waits for the operation to end
    partial = await _logs(api, op_id, follow=False)
    assert partial[-1] == {"state": "running"}
    gate.set()
    lines = await follower
    assert [x["line"] for x in lines[:-1]][-3:-1] == [
        "step 1/2 [1] FROM base",
        "step 2/2 [1] COPY a.txt /a.txt",
    ]
    assert lines[-1]["state"] == "succeeded"
    assert seen["build_args"] == {"A": "1"} and seen["files"] == ["a.txt", "docker"]
    assert str(seen["dockerfile"]).endswith("context/docker/Dockerfile")
    work = api.settings.data_dir / "operations" / f"{op_id}.work"
    assert not work.exists()  # the uploaded context is removed afterwards

    gate.clear()
    r = await api.http.post(
        "/v1/templates/build",
        params={"name": "web", "build_arg": "FAIL=1"},
        content=_tar({"Dockerfile": "FROM base\n"}),
    )
    op_id = r.json()["operation"]["id"]
    gate.set()
    end = (await _logs(api, op_id))[-1]
    assert end["state"] == "failed" and end["error"]["code"] == "build_failed"
    assert end["error"]["details"]["output"] == ["boom"]


@pytest.mark.parametrize(
    ("params", "body", "message"),
    [
        ({"name": "web"}, b"", "empty"),
        ({"name": "web"}, b"garbage" * 100, "not a tar archive"),
        ({"name": "web", "dockerfile": "../Dockerfile"}, None, "inside the build context"),
        ({"name": "web", "dockerfile": "nope"}, None, "no Dockerfile"),
        ({"name": "web", "build_arg": "NOEQUALS"}, None, "NAME=VALUE"),
    ],
)
async def test_bad_build_uploads_are_400(
    api: Api, params: dict[str, str], body: bytes | None, message: str
) -> None:
    content = body if body is not None else _tar({"Dockerfile": "FROM base\n"})
    r = await api.http.post("/v1/templates/build", params=params, content=content)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    assert list((api.settings.data_dir / "operations").glob("*.work")) == []


async def test_oversized_upload_is_400(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    import atelier.operations.upload as upload

    monkeypatch.setattr(upload.receive_upload, "__defaults__", (1000,))
    r = await api.http.post("/v1/templates/build", params={"name": "w"}, content=b"x" * 5000)
    assert r.status_code == 400 and "too large" in r.json()["message"]


async def test_running_operations_fail_at_restart(api: Api) -> None:
    ctx = _ctx(api)
    await ctx.repo.add_operation("op-stale", "template.build", "web", None)
    assert await ctx.operations.recover() == ["op-stale"]
    op = (await api.http.get("/v1/operations/op-stale")).json()
    assert op["state"] == "failed" and "server stopped" in op["error"]["message"]
    lines = await _logs(api, "op-stale")
    assert lines[-1]["state"] == "failed"


async def test_openapi_lists_the_new_routes(api: Api) -> None:
    r = await api.http.get("/openapi.json")
    paths = r.json()["paths"]
    for path in ("/v1/templates/build", "/v1/templates/pull", "/v1/operations/{op_id}/logs"):
        assert path in paths
