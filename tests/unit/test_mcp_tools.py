"""``atelier.mcp`` without an Atelier server: output limits, error mapping, the audit
summary, and tool calls through the ``mcp`` SDK's in-process client."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from atelier.errors import FileNotFound, SandboxNotFound
from atelier.mcp import McpConfig, build_server
from atelier.mcp.audit import summarize_arguments
from atelier.mcp.limits import BoundedOutput, decode_file
from atelier.mcp.results import ToolFailure, error_result
from atelier.mcp.sessions import bearer_token


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


# -- BoundedOutput -------------------------------------------------------------------


def test_output_under_the_limit_is_kept_whole() -> None:
    out = BoundedOutput(limit=16)
    out.feed("hello ")
    out.feed(b"world")
    assert not out.truncated
    assert out.text() == "hello world"
    assert out.total == 11


def test_output_at_exactly_the_limit_is_not_truncated() -> None:
    out = BoundedOutput(limit=8)
    out.feed("abcdefgh")
    assert not out.truncated and out.text() == "abcdefgh"


def test_huge_output_keeps_head_and_tail_with_a_note() -> None:
    out = BoundedOutput(limit=10)
    for i in range(10_000):
        out.feed(f"{i % 10}")
    assert out.truncated
    assert out.total == 10_000
    assert out.omitted == 9_990
    text = out.text()
    assert text.startswith("01234\n[... 9990 bytes omitted")
    assert "first 5 and the last 5" in text
    assert text.endswith("]\n56789")
    # memory stays bounded, whatever was written
    assert len(out._head) + len(out._tail) == 10


def test_a_character_split_by_the_cut_is_dropped_not_garbled() -> None:
    out = BoundedOutput(limit=6)  # 3 bytes of head, 3 of tail
    out.feed("aa" + "é" * 10 + "zz")  # é is 2 bytes: both cuts split one
    text = out.text()
    assert "\ufffd" not in text
    assert text.startswith("aa\n[... 18 bytes omitted")
    assert text.endswith("]\nzz")


def test_limit_must_hold_something() -> None:
    with pytest.raises(ValueError):
        BoundedOutput(limit=1)


# -- decode_file -----------------------------------------------------------------------


def test_text_file_is_returned_as_text() -> None:
    content = decode_file(b"hello \xe2\x9c\x93\n", size=10)
    assert (content.content, content.encoding, content.truncated) == ("hello ✓\n", "utf-8", False)
    assert content.note is None


def test_binary_file_is_base64_with_a_note() -> None:
    data = bytes(range(256))
    content = decode_file(data, size=256)
    assert content.encoding == "base64"
    assert base64.b64decode(content.content) == data
    assert content.note is not None and "base64" in content.note


def test_large_file_is_truncated_with_a_note_and_a_split_character_dropped() -> None:
    data = ("x" * 9 + "✓" * 10).encode()  # the 10-byte cut falls inside the first ✓
    content = decode_file(data[:11], size=len(data), limit=10)
    assert content.encoding == "utf-8"
    assert content.content == "x" * 9
    assert content.truncated and content.size == len(data)
    assert content.note is not None and f"the file is {len(data)} bytes" in content.note


# -- errors, audit, tokens -----------------------------------------------------------------


def test_atelier_errors_become_is_error_results_with_code_and_message() -> None:
    result = error_result(SandboxNotFound("sandbox sb-x not found"))
    assert result.is_error
    assert result.structured_content == {
        "error": {"code": "sandbox_not_found", "message": "sandbox sb-x not found"}
    }
    assert _text(result) == "error: sandbox sb-x not found (sandbox_not_found)"

    with_details = error_result(FileNotFound("no such file", details={"path": "/a"}))
    assert with_details.structured_content is not None
    assert with_details.structured_content["error"]["details"] == {"path": "/a"}


def test_tool_failures_carry_their_own_code() -> None:
    result = error_result(ToolFailure("node is missing", code="interpreter_not_found", x=1))
    error = {"code": "interpreter_not_found", "message": "node is missing", "details": {"x": 1}}
    assert result.structured_content == {"error": error}


def test_audit_summary_never_copies_contents_or_env_values() -> None:
    summary = summarize_arguments(
        {"path": "/a", "content": "héllo", "code": "print(1)", "env": {"SECRET": "v"},
         "command": "x" * 600, "sandbox_id": None}
    )  # fmt: skip
    assert summary["content"] == "<6 bytes>"
    assert summary["code"] == "<8 bytes>"
    assert summary["env"] == ["SECRET"]
    assert summary["command"].startswith("x" * 500) and summary["command"].endswith("<600 chars>")
    assert "sandbox_id" not in summary


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        (None, None),
        ({}, None),
        ({"authorization": "Bearer abc "}, "abc"),
        ({"authorization": "bearer abc"}, "abc"),
        ({"authorization": "Basic abc"}, None),
        ({"authorization": "Bearer "}, None),
    ],
)
def test_bearer_token(headers: dict[str, str] | None, token: str | None) -> None:
    assert bearer_token(headers) == token


# -- through the MCP SDK's client, in process -------------------------------------------


UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens


async def _call(config: McpConfig, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    async with Client(build_server(config)) as client:
        return await client.call_tool(tool, arguments)


async def test_tools_are_listed_with_typed_schemas() -> None:
    async with Client(build_server(McpConfig(api_url=UNREACHABLE, token="t"))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {
        "create_sandbox", "list_sandboxes", "delete_sandbox", "run_command", "run_code",
        "read_file", "write_file", "list_files", "get_preview_url",
    }  # fmt: skip
    run = tools["run_command"].input_schema
    assert run["required"] == ["command"]
    assert run["properties"]["timeout_seconds"]["default"] == 60
    assert run["properties"]["timeout_seconds"]["maximum"] == 3600
    code = tools["run_code"].input_schema["properties"]["language"]
    assert code["enum"] == ["python", "bash", "javascript"]
    assert "stateful" in (tools["run_code"].description or "")


async def test_an_unreachable_api_is_a_tool_error_not_a_crash() -> None:
    result = await _call(McpConfig(api_url=UNREACHABLE, token="t"), "run_command", {"command": "x"})
    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["error"]["code"] == "connection_error"


async def test_no_token_is_an_unauthenticated_tool_error() -> None:
    result = await _call(McpConfig(api_url=UNREACHABLE, token=None), "list_sandboxes", {})
    assert result.is_error
    assert "(unauthenticated)" in _text(result)


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("run_command", {}),
        ("run_command", {"command": "x", "timeout_seconds": 0}),
        ("run_code", {"code": "x", "language": "cobol"}),
        ("list_files", {"depth": 9}),
        ("get_preview_url", {"port": 70000}),
        ("delete_sandbox", {}),
    ],
)
async def test_bad_arguments_are_tool_errors(tool: str, arguments: dict[str, Any]) -> None:
    config = McpConfig(api_url=UNREACHABLE, token="t")
    async with Client(build_server(config)) as client:
        result = await client.call_tool(tool, arguments)
        assert result.is_error
        # and the server keeps serving
        assert (await client.list_tools()).tools
