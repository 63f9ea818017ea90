"""The async SDK sends exactly the requests the sync SDK sends, and returns the same values."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sdk_fakes import FILE, PROCESS, SANDBOX, Chunks, FakeApi, ndjson

from atelier import AsyncSandbox, Sandbox
from atelier.errors import AgentFailure, ApiConnectionError, AuthenticationError, SandboxNotFound
from atelier.sdk import Exit, FileEvent, Started, Stdout

SB = "/v1/sandboxes/sb-1"
EVENTS = ndjson(
    {"type": "started", "pid": 12},
    {"type": "stdout", "data": "ü\n"},
    {"type": "stderr", "data": "e"},
    {"type": "exit", "exit_code": 0, "signal": None, "timed_out": False},
)


def _scripted() -> FakeApi:
    fake = FakeApi()
    fake.on("POST", "/v1/sandboxes", httpx.Response(201, json=SANDBOX))
    fake.on("GET", "/v1/sandboxes", httpx.Response(200, json={"sandboxes": [SANDBOX]}))
    fake.on("GET", SB, httpx.Response(200, json=SANDBOX))
    fake.on("POST", f"{SB}/stop", httpx.Response(200, json={**SANDBOX, "state": "stopped"}))
    fake.on("POST", f"{SB}/start", httpx.Response(200, json=SANDBOX))
    fake.on("POST", f"{SB}/timeout", httpx.Response(200, json=SANDBOX))
    fake.on("GET", f"{SB}/logs", httpx.Response(200, text="log"))
    fake.on("DELETE", SB, httpx.Response(204))
    cut = len(EVENTS) // 2 + 1
    fake.on(
        "POST",
        f"{SB}/commands",
        lambda r: (
            httpx.Response(201, json=PROCESS)
            if json.loads(r.content)["background"]
            else httpx.Response(200, stream=Chunks([EVENTS[:cut], EVENTS[cut:]]))
        ),
    )
    fake.on("GET", f"{SB}/commands", httpx.Response(200, json={"processes": [PROCESS]}))
    fake.on("GET", f"{SB}/commands/12/events", httpx.Response(200, stream=Chunks([EVENTS])))
    fake.on("POST", f"{SB}/commands/12/stdin", httpx.Response(204))
    fake.on("POST", f"{SB}/commands/12/signal", httpx.Response(204))
    fake.on("GET", f"{SB}/files", httpx.Response(200, stream=Chunks([b"ab", b"c"])))
    fake.on("PUT", f"{SB}/files", httpx.Response(200, json=FILE))
    fake.on("DELETE", f"{SB}/files", httpx.Response(204))
    fake.on("GET", f"{SB}/files/list", httpx.Response(200, json={"entries": [FILE]}))
    fake.on("GET", f"{SB}/files/stat", httpx.Response(200, json=FILE))
    fake.on("GET", f"{SB}/files/exists", httpx.Response(200, json={"exists": True}))
    fake.on(
        "POST", f"{SB}/files/mkdir", httpx.Response(200, json={"created": False, "entry": FILE})
    )
    fake.on("POST", f"{SB}/files/rename", httpx.Response(200, json=FILE))
    fake.on("POST", f"{SB}/files/chmod", httpx.Response(200, json=FILE))
    watch = ndjson({"type": "create", "path": "/w/x", "is_dir": False})
    fake.on("GET", f"{SB}/files/watch", httpx.Response(200, stream=Chunks([watch])))
    return fake


def _sync_scenario(fake: FakeApi) -> list[Any]:
    out: list[Any] = []
    out.append(Sandbox.list(state="running", labels={"a": "b"}, transport=fake.transport))
    with Sandbox.create(template="t", env={"E": "1"}, transport=fake.transport) as sb:
        out += [sb.info, sb.get_info(), sb.stop(), sb.start(), sb.set_timeout(5), sb.logs(tail=3)]
        seen: list[str] = []
        out.append(sb.commands.run("echo ü", env={"X": "y"}, on_stdout=seen.append))
        out.append(seen)
        h = sb.commands.run(argv=["seq", "3"], background=True, keep_stdin_open=True)
        out += [h.pid, list(h.stream()), h.wait()]
        h.send_stdin("in", eof=True)
        out += [h.kill(), sb.commands.list(), sb.commands.connect(12).info]
        sb.commands.signal(12, "SIGINT")
        out += [sb.files.read("/f"), sb.files.read_text("/f"), list(sb.files.read_stream("/f"))]
        out.append(sb.files.write("/f", iter([b"x", b"y"]), mode=0o640, user="root"))
        out += [sb.files.list("/", depth=3), sb.files.stat("/f"), sb.files.exists("/f")]
        out += [sb.files.make_dir("/d"), sb.files.rename("/a", "/b"), sb.files.chmod("/b", 0o700)]
        sb.files.remove("/d", recursive=True)
        with sb.files.watch("/w") as events:
            out.append(list(events))
    return out


async def _async_scenario(fake: FakeApi) -> list[Any]:
    out: list[Any] = []
    out.append(
        await AsyncSandbox.list(state="running", labels={"a": "b"}, transport=fake.transport)
    )
    async with await AsyncSandbox.create(
        template="t", env={"E": "1"}, transport=fake.transport
    ) as sb:
        out += [sb.info, await sb.get_info(), await sb.stop(), await sb.start()]
        out += [await sb.set_timeout(5), await sb.logs(tail=3)]
        seen: list[str] = []

        async def on_stdout(data: str) -> None:  # coroutine handlers are awaited
            seen.append(data)

        out.append(await sb.commands.run("echo ü", env={"X": "y"}, on_stdout=on_stdout))
        out.append(seen)
        h = await sb.commands.run(argv=["seq", "3"], background=True, keep_stdin_open=True)
        out += [h.pid, [ev async for ev in h.stream()], await h.wait()]
        await h.send_stdin("in", eof=True)
        out += [await h.kill(), await sb.commands.list(), (await sb.commands.connect(12)).info]
        await sb.commands.signal(12, "SIGINT")
        out += [await sb.files.read("/f"), await sb.files.read_text("/f")]
        out.append([chunk async for chunk in await sb.files.read_stream("/f")])

        async def body() -> AsyncIterator[bytes]:
            yield b"x"
            yield b"y"

        out.append(await sb.files.write("/f", body(), mode=0o640, user="root"))
        out += [await sb.files.list("/", depth=3), await sb.files.stat("/f")]
        out += [await sb.files.exists("/f"), await sb.files.make_dir("/d")]
        out += [await sb.files.rename("/a", "/b"), await sb.files.chmod("/b", 0o700)]
        await sb.files.remove("/d", recursive=True)
        async with sb.files.watch("/w") as events:
            out.append([ev async for ev in events])
    return out


async def test_sync_and_async_are_the_same_protocol() -> None:
    sync_fake, async_fake = _scripted(), _scripted()
    sync_out = _sync_scenario(sync_fake)
    async_out = await _async_scenario(async_fake)
    assert sync_fake.summary() == async_fake.summary()
    assert [r.headers["authorization"] for r in async_fake.requests] == [
        r.headers["authorization"] for r in sync_fake.requests
    ]
    assert sync_out == async_out
    # spot checks that the scenario exercised what it claims
    assert sync_out[7].stdout == "ü\n" and sync_out[8] == ["ü\n"]
    assert sync_out[10] == [Started(12), Stdout("ü\n"), sync_out[10][2], Exit(0)]
    assert sync_out[-1] == [FileEvent("create", "/w/x", False)]
    assert len(sync_fake.requests) == 29


async def test_async_errors_map_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi()
    fake.on("GET", SB, httpx.Response(404, json={"code": "sandbox_not_found", "message": "x"}))
    with pytest.raises(SandboxNotFound):
        await AsyncSandbox.connect("sb-1", transport=fake.transport)
    with pytest.raises(ApiConnectionError):
        await AsyncSandbox.list(api_url="http://127.0.0.1:1")
    fake.on("GET", SB, httpx.Response(200, json=SANDBOX))
    fake.on(
        "POST",
        f"{SB}/commands",
        httpx.Response(
            200,
            stream=Chunks(
                [
                    ndjson(
                        {"type": "stdout", "data": "a"},
                        {"type": "error", "code": "agent_error", "message": "x"},
                    )
                ]
            ),
        ),
    )
    sb = await AsyncSandbox.connect("sb-1", transport=fake.transport)
    with pytest.raises(AgentFailure):
        await sb.commands.run("x")
    monkeypatch.delenv("ATELIER_TOKEN")
    with pytest.raises(AuthenticationError):
        await AsyncSandbox.create(transport=fake.transport)
