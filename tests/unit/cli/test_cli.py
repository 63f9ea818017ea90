"""The CLI: argument parsing, output, exit codes and the one-line error format."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from sdk_fakes import FILE, SANDBOX, TOKEN, Chunks, FakeApi, error, ndjson
from typer.testing import CliRunner, Result

from atelier.cli.context import CliState
from atelier.cli.main import app

SB = "/v1/sandboxes/sb-1"


def run(fake: FakeApi | None, *args: str, input: str | bytes | None = None) -> Result:
    obj = CliState(transport=fake.transport if fake else None)
    return CliRunner().invoke(app, list(args), obj=obj, input=input)


def test_create_prints_the_id_and_sends_parsed_options(fake: FakeApi) -> None:
    fake.on("POST", "/v1/sandboxes", httpx.Response(201, json=SANDBOX))
    result = run(
        fake,
        "create",
        "--template",
        "py",
        "--vcpus",
        "2",
        "--memory",
        "2G",
        "--disk",
        "4096",
        "-e",
        "A=1",
        "--env",
        "B=x=y",
        "--label",
        "team=ml",
        "--timeout",
        "never",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "sb-1\n"
    assert json.loads(fake.last.content) == {
        "template": "py",
        "vcpus": 2,
        "memory_mib": 2048,
        "disk_mib": 4096,
        "env": {"A": "1", "B": "x=y"},
        "labels": {"team": "ml"},
        "timeout": None,
    }
    assert fake.last.headers["authorization"] == f"Bearer {TOKEN}"
    result = run(fake, "create", "--timeout", "5m", "--json")
    assert json.loads(result.stdout)["expires_at"] == "2026-11-27T18:30:00Z"
    assert json.loads(fake.last.content)["timeout"] == 300


@pytest.mark.parametrize(
    "args", [("create", "--env", "NOEQUALS"), ("create", "--memory", "lots"), ("ls", "-l", "=x")]
)
def test_bad_option_values_are_usage_errors(fake: FakeApi, args: tuple[str, ...]) -> None:
    result = run(fake, *args)
    assert result.exit_code == 2
    assert fake.requests == []


def test_ls_table_json_and_filters(fake: FakeApi) -> None:
    other = {**SANDBOX, "id": "sb-2", "state": "stopped", "labels": {}, "expires_at": None}
    fake.on("GET", "/v1/sandboxes", httpx.Response(200, json={"sandboxes": [SANDBOX, other]}))
    result = run(fake, "ls", "--state", "running", "-l", "team=ml")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "TEMPLATE", "RUNTIME"]
    assert lines[1].split()[:4] == ["sb-1", "running", "base", "gvisor"]
    assert "team=ml" in lines[1] and "never" in lines[2]
    assert fake.last.url.params["state"] == "running"
    assert fake.last.url.params.get_list("label") == ["team=ml"]
    result = run(fake, "ls", "--json")
    assert [s["id"] for s in json.loads(result.stdout)] == ["sb-1", "sb-2"]
    fake.on("GET", "/v1/sandboxes", httpx.Response(200, json={"sandboxes": []}))
    assert "no sandboxes" in run(fake, "ls").stdout


def test_ls_piped_never_cuts_labels_or_ids(fake: FakeApi) -> None:
    labels = {"owner": "someone-with-a-rather-long-name", "team": "machine-learning"}
    many = {**SANDBOX, "id": "sb-0123456789abcdef", "labels": labels}
    fake.on("GET", "/v1/sandboxes", httpx.Response(200, json={"sandboxes": [many]}))
    row = run(fake, "ls").stdout.splitlines()[1]
    assert row.startswith("sb-0123456789abcdef ")
    assert row.rstrip().endswith("owner=someone-with-a-rather-long-name,team=machine-learning")


def test_global_url_and_token_options(fake: FakeApi) -> None:
    fake.on("GET", "/v1/sandboxes", httpx.Response(200, json={"sandboxes": []}))
    result = run(fake, "--url", "http://elsewhere:1234", "--token", "tok2", "ls")
    assert result.exit_code == 0
    assert str(fake.last.url) == "http://elsewhere:1234/v1/sandboxes"
    assert fake.last.headers["authorization"] == "Bearer tok2"


def test_errors_are_one_red_line_with_the_code(fake: FakeApi) -> None:
    fake.on("GET", "/v1/sandboxes/sb-x", error(404, "sandbox_not_found", "no sandbox sb-x"))
    result = run(fake, "stop", "sb-x")
    assert result.exit_code == 2
    assert result.stderr == "error: no sandbox sb-x (sandbox_not_found)\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output

    fake.on("POST", f"{SB}/stop", error(500, "runtime_error", "runsc\nexploded"))
    result = run(fake, "stop", "sb-1")
    assert result.exit_code == 1
    assert result.stderr == "error: runsc exploded (runtime_error)\n"


def test_unreachable_server_and_missing_token(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(None, "--url", "http://127.0.0.1:1", "ls")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the Atelier API")
    assert result.stderr.endswith("(connection_error)\n")
    monkeypatch.delenv("ATELIER_TOKEN")
    result = run(None, "ls")
    assert result.exit_code == 2
    assert "--token" in result.stderr and "(unauthenticated)" in result.stderr


def test_token_falls_back_on_the_local_admin_token(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ATELIER_TOKEN")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin-token").write_text("local-admin\n")
    fake.on("GET", "/v1/sandboxes", httpx.Response(200, json={"sandboxes": []}))
    assert run(fake, "ls").exit_code == 0
    assert fake.last.headers["authorization"] == "Bearer local-admin"


def test_lifecycle_commands(fake: FakeApi) -> None:
    fake.on("POST", f"{SB}/stop", httpx.Response(200, json={**SANDBOX, "state": "stopped"}))
    fake.on("POST", f"{SB}/start", httpx.Response(200, json=SANDBOX))
    fake.on("POST", f"{SB}/timeout", httpx.Response(200, json=SANDBOX))
    fake.on("GET", f"{SB}/logs", httpx.Response(200, text="line1\nline2"))
    assert run(fake, "stop", "sb-1").stdout == "sb-1 stopped\n"
    assert run(fake, "start", "sb-1").stdout == "sb-1 running\n"
    result = run(fake, "timeout", "sb-1", "10m")
    assert result.stdout == "sb-1 expires at 2026-11-27T18:30:00+00:00\n"
    assert json.loads(fake.last.content) == {"timeout": 600}
    assert run(fake, "logs", "sb-1", "--tail", "2").stdout == "line1\nline2\n"
    assert fake.last.url.params["tail"] == "2"
    assert run(fake, "timeout", "sb-1", "soon").exit_code == 2


def test_rm_tries_every_sandbox(fake: FakeApi) -> None:
    fake.on("DELETE", SB, httpx.Response(204))
    fake.on("GET", "/v1/sandboxes/sb-gone", error(404, "sandbox_not_found", "no sb-gone"))
    result = run(fake, "rm", "sb-gone", "sb-1")
    assert result.exit_code == 2
    assert result.stdout == "sb-1\n"
    assert result.stderr == "error: no sb-gone (sandbox_not_found)\n"
    result = run(fake, "rm", "--force", "sb-gone", "sb-1")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "sb-1\n", "")


def _exec_reply(*events: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, stream=Chunks([ndjson(*events)]))


def test_exec_streams_output_and_exits_with_the_command_code(fake: FakeApi) -> None:
    fake.on(
        "POST",
        f"{SB}/commands",
        _exec_reply(
            {"type": "started", "pid": 3},
            {"type": "stdout", "data": "out\n"},
            {"type": "stderr", "data": "err\n"},
            {"type": "exit", "exit_code": 7, "signal": None, "timed_out": False},
        ),
    )
    result = run(fake, "exec", "sb-1", "-e", "A=1", "--cwd", "/tmp", "--", "echo out; exit 7")
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    body = json.loads(fake.last.content)
    assert body["cmd"] == "echo out; exit 7" and body["env"] == {"A": "1"}
    assert body["cwd"] == "/tmp" and "argv" not in body

    result = run(fake, "exec", "sb-1", "--user", "root", "--", "ls", "-la", "/")
    body = json.loads(fake.last.content)
    assert body["argv"] == ["ls", "-la", "/"] and body["user"] == "root" and "cmd" not in body


def test_exec_stdin_and_timeout(fake: FakeApi) -> None:
    fake.on(
        "POST",
        f"{SB}/commands",
        _exec_reply(
            {"type": "exit", "exit_code": 137, "signal": "SIGKILL", "timed_out": True},
        ),
    )
    result = run(fake, "exec", "sb-1", "--stdin", "--timeout", "2", "--", "cat", input="piped")
    assert result.exit_code == 137
    assert "timed out after 2s" in result.stderr
    body = json.loads(fake.last.content)
    assert body["stdin"] == "piped" and body["timeout"] == 2


def test_exec_needs_a_command(fake: FakeApi) -> None:
    assert run(fake, "exec", "sb-1").exit_code == 2


def test_shell_refuses_without_a_tty(fake: FakeApi) -> None:
    result = run(fake, "shell", "sb-1")
    assert result.exit_code == 2
    assert "not a tty" in result.stderr and "(not_a_tty)" in result.stderr
    assert fake.requests == []


def test_cp_upload_and_download(fake: FakeApi, tmp_path: Path) -> None:
    local = tmp_path / "script.sh"
    local.write_bytes(b"#!/bin/sh\necho hi\n")
    local.chmod(0o750)
    fake.on("GET", f"{SB}/files/stat", error(404, "file_not_found"))
    fake.on("PUT", f"{SB}/files", httpx.Response(200, json=FILE))
    result = run(fake, "cp", str(local), "sb-1:/home/user/s.sh")
    assert result.exit_code == 0, result.output
    assert fake.last.content == local.read_bytes()
    assert dict(fake.last.url.params) == {"path": "/home/user/s.sh", "mode": "0750"}

    fake.on("GET", f"{SB}/files/stat", httpx.Response(200, json={**FILE, "type": "dir"}))
    run(fake, "cp", str(local), "sb-1:/home/user")
    assert fake.last.url.params["path"] == "/home/user/script.sh"

    fake.on("GET", f"{SB}/files/stat", httpx.Response(200, json=FILE))
    fake.on("GET", f"{SB}/files", httpx.Response(200, stream=Chunks([b"ab", b"c"])))
    result = run(fake, "cp", "sb-1:/home/user/a.txt", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a.txt").read_bytes() == b"abc"
    result = run(fake, "cp", "sb-1:/home/user/a.txt", "-")
    assert result.stdout_bytes == b"abc"


def test_cp_errors(fake: FakeApi, tmp_path: Path) -> None:
    result = run(fake, "cp", str(tmp_path), "sb-1:/x")
    assert result.exit_code == 2
    assert result.stderr.endswith("is a directory (use cp -r) (is_a_directory)\n")
    result = run(fake, "cp", str(tmp_path / "nope"), "sb-1:/x")
    assert result.exit_code == 2 and "(file_not_found)" in result.stderr
    result = run(fake, "cp", "a", "b")
    assert result.exit_code == 2 and "one side of cp must be in a sandbox" in result.stderr
    result = run(fake, "cp", "sb-1:relative", "b")
    assert result.exit_code == 2 and "(invalid_path)" in result.stderr
    fake.on("GET", f"{SB}/files/stat", httpx.Response(200, json=FILE))
    result = run(fake, "cp", "sb-1:/home/user/a.txt", str(tmp_path / "no" / "dir") + "/")
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: local directory {tmp_path / 'no' / 'dir'} does not exist (file_not_found)\n"
    )


def test_cp_recursive_download(fake: FakeApi, tmp_path: Path) -> None:
    d = {**FILE, "type": "dir"}
    fake.on(
        "GET", f"{SB}/files/stat", httpx.Response(200, json={**d, "name": "proj", "path": "/p"})
    )

    def listing(request: httpx.Request) -> httpx.Response:
        entries = {
            "/p": [
                {**FILE, "name": "a.txt", "path": "/p/a.txt"},
                {**d, "name": "sub", "path": "/p/sub"},
                {**FILE, "name": "ln", "path": "/p/ln", "type": "symlink"},
            ],
            "/p/sub": [{**FILE, "name": "b.txt", "path": "/p/sub/b.txt"}],
        }[request.url.params["path"]]
        return httpx.Response(200, json={"entries": entries})

    fake.on("GET", f"{SB}/files/list", listing)
    fake.on(
        "GET", f"{SB}/files", lambda r: httpx.Response(200, content=r.url.params["path"].encode())
    )
    result = run(fake, "cp", "-r", "sb-1:/p", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"/p/a.txt"
    assert (tmp_path / "out" / "sub" / "b.txt").read_bytes() == b"/p/sub/b.txt"
    assert "skipping /p/ln (symlink)" in result.stderr


def test_server_passes_setting_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Any] = []
    module = types.ModuleType("atelier.server.main")
    module.serve = seen.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "atelier.server.main", module)
    result = run(None, "server", "--port", "9999", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert (settings.port, settings.data_dir, settings.host) == (9999, tmp_path, "127.0.0.1")


@pytest.mark.parametrize(("ok", "code"), [(True, 0), (False, 1)])
def test_doctor_exit_code(monkeypatch: pytest.MonkeyPatch, ok: bool, code: int) -> None:
    module = types.ModuleType("atelier.doctor")
    module.run_checks = lambda settings: types.SimpleNamespace(ok=ok)  # type: ignore[attr-defined]
    module.render = lambda report, console: console.print("rendered")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "atelier.doctor", module)
    result = run(None, "doctor")
    assert (result.exit_code, result.stdout) == (code, "rendered\n")


def test_cp_recursive_upload(fake: FakeApi, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"A")
    (src / "sub" / "b.txt").write_bytes(b"B")
    fake.on("GET", f"{SB}/files/stat", error(404, "file_not_found"))
    fake.on("POST", f"{SB}/files/mkdir", httpx.Response(200, json={"created": True, "entry": FILE}))
    fake.on("PUT", f"{SB}/files", httpx.Response(200, json=FILE))
    result = run(fake, "cp", "-r", str(src), "sb-1:/dst")
    assert result.exit_code == 0, result.output
    made = [json.loads(r.content)["path"] for r in fake.requests if r.url.path.endswith("/mkdir")]
    put = {r.url.params["path"]: r.content for r in fake.requests if r.method == "PUT"}
    assert made == ["/dst", "/dst/sub"]
    assert put == {"/dst/a.txt": b"A", "/dst/sub/b.txt": b"B"}


def test_cp_between_sandboxes_and_from_stdin(fake: FakeApi) -> None:
    fake.on("GET", "/v1/sandboxes/sb-2", httpx.Response(200, json={**SANDBOX, "id": "sb-2"}))
    fake.on("GET", f"{SB}/files/stat", httpx.Response(200, json={**FILE, "mode": "0600"}))
    fake.on("GET", f"{SB}/files", httpx.Response(200, stream=Chunks([b"x", b"y"])))
    fake.on("GET", "/v1/sandboxes/sb-2/files/stat", error(404, "file_not_found"))
    fake.on("PUT", "/v1/sandboxes/sb-2/files", httpx.Response(200, json=FILE))
    result = run(fake, "cp", "sb-1:/home/user/a.txt", "sb-2:/tmp/copy")
    assert result.exit_code == 0, result.output
    assert fake.last.content == b"xy"
    assert dict(fake.last.url.params) == {"path": "/tmp/copy", "mode": "0600"}

    result = run(fake, "cp", "-", "sb-2:/tmp/in", input=b"from stdin")
    assert result.exit_code == 0, result.output
    assert fake.last.content == b"from stdin" and fake.last.url.params["path"] == "/tmp/in"
