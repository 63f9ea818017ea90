"""``atelier mcp`` driven by the ``mcp`` SDK's own client, over stdio and streamable HTTP,
against a real Atelier server with real gVisor sandboxes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent
from server_harness import ServerProcess, free_port

from atelier import Sandbox

pytestmark = pytest.mark.integration

ATELIER = str(Path(sys.executable).with_name("atelier"))
SESSION_LABEL = "atelier.mcp-session"
TOOLS = {
    "create_sandbox", "list_sandboxes", "delete_sandbox", "run_command", "run_code",
    "read_file", "write_file", "list_files", "get_preview_url",
}  # fmt: skip


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def _mcp_sandboxes(server: ServerProcess) -> list[str]:
    with server.client() as http:
        return [
            sb["id"]
            for sb in http.get("/v1/sandboxes").json()["sandboxes"]
            if SESSION_LABEL in sb.get("labels", {})
        ]


def _wait_until_gone(server: ServerProcess, sandbox_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sandbox_id in _mcp_sandboxes(server):
        assert time.monotonic() < deadline, f"session sandbox {sandbox_id} was not deleted"
        time.sleep(0.3)


def _env(server: ServerProcess) -> dict[str, str]:
    return {"ATELIER_URL": server.url, "ATELIER_TOKEN": server.token}


@contextlib.asynccontextmanager
async def stdio_session(server: ServerProcess, *extra: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=ATELIER, args=["mcp", *extra], env=_env(server))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@contextlib.contextmanager
def http_server(server: ServerProcess, *extra: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [ATELIER, "mcp", "--transport", "http", "--port", str(port), *extra],
        env={**os.environ, **_env(server)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            assert time.monotonic() < deadline, "atelier mcp --transport http did not listen"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("atelier mcp did not stop on SIGTERM")


@contextlib.asynccontextmanager
async def http_session(url: str) -> AsyncIterator[ClientSession]:
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def _call(session: ClientSession, tool: str, **arguments: Any) -> CallToolResult:
    return await session.call_tool(tool, arguments)


async def _ok(session: ClientSession, tool: str, **arguments: Any) -> CallToolResult:
    result = await _call(session, tool, **arguments)
    assert not result.is_error, _text(result)
    return result


async def exercise(session: ClientSession) -> str:
    """The checks both transports must pass; returns the session's sandbox id."""
    tools = await session.list_tools()
    assert {t.name for t in tools.tools} == TOOLS
    run_command = next(t for t in tools.tools if t.name == "run_command")
    assert run_command.input_schema["required"] == ["command"]

    hi = await _ok(session, "run_command", command="echo hi")
    assert _text(hi).startswith("hi\n")
    assert hi.structured_content is not None
    assert hi.structured_content["exit_code"] == 0
    sandbox_id = hi.structured_content["sandbox_id"]

    big = await _ok(session, "run_command", command="head -c 1000000 /dev/zero | tr '\\0' a")
    assert big.structured_content is not None
    assert big.structured_content["truncated"] is True
    assert big.structured_content["stdout_bytes"] == 1_000_000
    assert "bytes omitted" in _text(big)
    assert len(_text(big)) < 70_000
    assert big.structured_content["sandbox_id"] == sandbox_id

    failing = await _ok(session, "run_command", command="echo oops >&2; exit 3")
    assert failing.structured_content is not None
    assert failing.structured_content["exit_code"] == 3
    assert "oops" in _text(failing)

    await _ok(session, "write_file", path="/home/user/notes/a.txt", content="hello ✓\n")
    read = await _ok(session, "read_file", path="notes/a.txt")
    assert _text(read) == "hello ✓\n"
    listing = await _ok(session, "list_files", path="/home/user/notes")
    assert "/home/user/notes/a.txt" in _text(listing)

    code = await _ok(session, "run_code", code="print(6*7)", language="python")
    assert _text(code).startswith("42\n")
    assert code.structured_content is not None
    assert code.structured_content["sandbox_id"] == sandbox_id

    js = await _call(session, "run_code", code="console.log(6*7)", language="javascript")
    if js.is_error:  # the base template has no node: a clear error, not a crash
        assert "interpreter_not_found" in _text(js) and "node" in _text(js)
    else:
        assert _text(js).startswith("42\n")

    await _ok(session, "run_command", command="nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
    preview = await _ok(session, "get_preview_url", port=8000)
    assert preview.structured_content is not None
    assert "/8000" in preview.structured_content["url"]
    assert preview.structured_content["link"].startswith("http")

    # bad arguments: MCP error results, and the server keeps serving
    missing = await _call(session, "run_command")
    assert missing.is_error
    unknown = await _call(session, "run_command", command="true", sandbox_id="sb-nosuchbox")
    assert unknown.is_error
    assert unknown.structured_content is not None
    assert unknown.structured_content["error"]["code"] == "sandbox_not_found"
    assert "sandbox_not_found" in _text(unknown)
    bad_language = await _call(session, "run_code", code="x", language="cobol")
    assert bad_language.is_error
    not_a_file = await _call(session, "read_file", path="/nope/missing.txt")
    assert not_a_file.is_error and "file_not_found" in _text(not_a_file)

    again = await _ok(session, "run_command", command="cat /home/user/notes/a.txt")
    assert again.structured_content is not None
    assert again.structured_content["sandbox_id"] == sandbox_id
    listed = await _ok(session, "list_sandboxes")
    assert listed.structured_content is not None
    mine = [sb for sb in listed.structured_content["sandboxes"] if sb["current"]]
    assert [sb["id"] for sb in mine] == [sandbox_id]
    return sandbox_id


async def test_stdio(server: ServerProcess, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    async with stdio_session(server, "--audit-log", str(audit)) as session:
        sandbox_id = await exercise(session)
        assert sandbox_id in _mcp_sandboxes(server)
        with server.client() as http:  # the calls are in the sandbox's own audit trail too
            events = http.get(f"/v1/sandboxes/{sandbox_id}/events").json()["events"]
        calls = [e for e in events if e["kind"] == "client.mcp.tool_call"]
        assert {"run_command", "write_file", "read_file"} <= {e["tool"] for e in calls}
        assert all(e["actor"] for e in calls)
    _wait_until_gone(server, sandbox_id)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    echo = next(e for e in lines if e["tool"] == "run_command")
    assert echo["sandbox_id"] == sandbox_id and echo["ok"] is True
    assert echo["arguments"]["command"] == "echo hi"
    failed = [e for e in lines if not e["ok"]]
    assert {e.get("error") for e in failed} >= {"sandbox_not_found", "file_not_found"}
    writes = [e for e in lines if e["tool"] == "write_file"]
    assert writes[0]["arguments"]["content"] == "<10 bytes>"  # contents are never logged


async def test_streamable_http(server: ServerProcess) -> None:
    with http_server(server) as url:
        async with http_session(url) as session:
            sandbox_id = await exercise(session)
        _wait_until_gone(server, sandbox_id)  # the client's DELETE ended the session
        # a second session gets its own sandbox; a kept one survives the session
        async with http_session(url) as session:
            kept = await _ok(session, "create_sandbox", keep=True)
            assert kept.structured_content is not None
            kept_id = kept.structured_content["id"]
            assert kept_id != sandbox_id
            pwd = await _ok(session, "run_command", command="pwd")
            assert pwd.structured_content is not None
            assert pwd.structured_content["sandbox_id"] == kept_id
        try:
            assert kept_id in _mcp_sandboxes(server)
        finally:
            Sandbox.connect(kept_id, api_url=server.url, token=server.token).kill()


async def test_http_uses_the_callers_bearer_token(server: ServerProcess) -> None:
    """Started without a token, the HTTP server acts with each request's own token."""
    env = {k: v for k, v in os.environ.items() if k != "ATELIER_TOKEN"}
    port = free_port()
    proc = subprocess.Popen(
        [ATELIER, "--url", server.url, "mcp", "--transport", "http", "--port", str(port)],
        env={**env, "ATELIER_DATA_DIR": "/nonexistent"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url, timeout=1)
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        async with http_session(url) as session:
            anonymous = await _call(session, "list_sandboxes")
            assert anonymous.is_error and "unauthenticated" in _text(anonymous)
        headers = {"Authorization": f"Bearer {server.token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=120) as client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            listed = await _ok(session, "list_sandboxes")
            assert listed.structured_content is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


async def test_stdio_sessionless_protocol(server: ServerProcess) -> None:
    """The SDK's ``Client`` speaks the sessionless 2026 protocol when it can: calls still
    share one sandbox, deleted when ``atelier mcp`` exits."""
    from mcp import Client

    params = StdioServerParameters(command=ATELIER, args=["mcp"], env=_env(server))
    async with Client(params) as client:
        assert client.protocol_version == "2026-07-28"
        first = await client.call_tool("run_command", {"command": "echo one > /tmp/x"})
        second = await client.call_tool("run_command", {"command": "cat /tmp/x"})
        assert not first.is_error and not second.is_error, _text(first) + _text(second)
        assert first.structured_content is not None and second.structured_content is not None
        sandbox_id = first.structured_content["sandbox_id"]
        assert second.structured_content["sandbox_id"] == sandbox_id
        assert _text(second).startswith("one\n")
    _wait_until_gone(server, sandbox_id)
