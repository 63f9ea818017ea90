from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import httpx
from sdk_fakes import FakeApi
from typer.testing import CliRunner

from atelier.cli.context import CliState
from atelier.cli.main import app
from atelier.cli.templates import parse_step

OP = {
    "id": "op-1",
    "kind": "template.build",
    "target": "web",
    "state": "running",
    "owner": "tok",
    "error": None,
    "result": None,
    "created_at": "2026-11-28T10:00:00Z",
    "finished_at": None,
}


def _run(fake: FakeApi, *args: str) -> object:
    return CliRunner().invoke(app, list(args), obj=CliState(transport=fake.transport))


def test_local_commands_reach_the_images_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    ls = runner.invoke(app, ["template", "local", "ls", "--data-dir", str(tmp_path)])
    assert ls.exit_code == 0, ls.output
    rm = runner.invoke(app, ["template", "local", "rm", "nosuch", "--data-dir", str(tmp_path)])
    assert rm.exit_code != 0
    assert "template 'nosuch' not found" in rm.output


def test_parse_step() -> None:
    assert parse_step("step 3/7 [1] RUN echo hi") == (3, 7)
    assert parse_step("footstep 3/7") is None
    assert parse_step("pulling alpine") is None


def _logs(lines: list[str], end: dict[str, object]) -> httpx.Response:
    body = "".join(json.dumps({"at": "2026-11-28T10:00:01Z", "line": x}) + "\n" for x in lines)
    return httpx.Response(200, content=(body + json.dumps(end) + "\n").encode())


def test_build_uploads_the_context_and_follows_the_log(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    fake = FakeApi()
    fake.on("POST", "/v1/templates/build", httpx.Response(202, json={"operation": OP}))
    fake.on(
        "GET", "/v1/operations/op-1/logs", _logs(["step 1/2 FROM base"], {"state": "succeeded"})
    )
    done = {**OP, "state": "succeeded", "result": {"template": "web", "version": 3}}
    fake.on("GET", "/v1/operations/op-1", httpx.Response(200, json=done))
    result = _run(fake, "template", "build", "web", str(tmp_path), "--build-arg", "A=1")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "version 3 ready" in result.output  # type: ignore[attr-defined]
    upload = next(r for r in fake.requests if r.url.path == "/v1/templates/build")
    assert upload.url.params.get_list("build_arg") == ["A=1"]
    assert upload.url.params["dockerfile"] == "Dockerfile"
    with tarfile.open(fileobj=io.BytesIO(upload.content), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["Dockerfile", "sub", "sub/a.txt"]


def test_failed_build_prints_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\nRUN false\n")
    fake = FakeApi()
    fake.on("POST", "/v1/templates/build", httpx.Response(202, json={"operation": OP}))
    error = {
        "code": "build_failed",
        "message": "step 2 (Dockerfile:2) failed with exit code 1: RUN false\n(no output)",
        "details": {"step": 2},
    }
    fake.on("GET", "/v1/operations/op-1/logs", _logs(["step 2/2 RUN false"], {"state": "failed"}))
    failed = {**OP, "state": "failed", "error": error}
    fake.on("GET", "/v1/operations/op-1", httpx.Response(200, json=failed))
    result = _run(fake, "template", "build", "web", str(tmp_path))
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    errors = [x for x in result.output.splitlines() if "error" in x]  # type: ignore[attr-defined]
    assert len(errors) == 1 and "failed with exit code 1" in errors[0]


def test_ls_and_rm_in_use(tmp_path: Path) -> None:
    fake = FakeApi()
    tpl = {"name": "web", "runtime": "gvisor", "ready": True, "size_bytes": 2**20}
    fake.on(
        "GET",
        "/v1/templates",
        httpx.Response(200, json={"templates": [{**tpl, "version": 2, "versions": [1, 2]}]}),
    )
    in_use = {
        "code": "template_in_use",
        "message": "template 'web' is used by 1 sandbox(es): sb-1; delete them first",
        "details": {"sandbox_ids": ["sb-1"]},
    }
    fake.on("DELETE", "/v1/templates/web", httpx.Response(409, json=in_use))
    ls = _run(fake, "template", "ls")
    assert ls.exit_code == 0 and "1,2" in ls.output  # type: ignore[attr-defined]
    rm = _run(fake, "template", "rm", "web")
    assert rm.exit_code == 2  # type: ignore[attr-defined]
    assert "sb-1" in rm.output and "template_in_use" in rm.output  # type: ignore[attr-defined]
