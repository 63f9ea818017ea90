"""Commands: request bodies, NDJSON event streams, handles."""

from __future__ import annotations

import json

import httpx
import pytest
from sdk_fakes import PROCESS, Chunks, FakeApi, error, ndjson

from atelier import CommandResult, Sandbox
from atelier.errors import AgentFailure, ApiConnectionError, InvalidRequest, ProcessNotFound
from atelier.sdk import Exit, Started, Stderr, Stdout
from atelier.sdk._base import NdjsonDecoder, parse_event

CMDS = "/v1/sandboxes/sb-1/commands"


def _events(*chunks: bytes) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "application/x-ndjson"}, stream=Chunks(list(chunks))
    )


@pytest.fixture
def sb(fake: FakeApi) -> Sandbox:
    return Sandbox.connect("sb-1", transport=fake.transport)


def test_run_collects_output_and_calls_handlers(fake: FakeApi, sb: Sandbox) -> None:
    fake.on(
        "POST",
        CMDS,
        _events(
            ndjson(
                {"type": "started", "pid": 7},
                {"type": "stdout", "data": "42\n"},
                {"type": "stderr", "data": "warn\n"},
                {"type": "exit", "exit_code": 3, "signal": None, "timed_out": False},
            )
        ),
    )
    seen: list[tuple[str, str]] = []
    result = sb.commands.run(
        "python3 -c 'print(6*7)'",
        env={"A": "1"},
        cwd="/tmp",
        user="root",
        timeout=5,
        stdin="in",
        on_stdout=lambda s: seen.append(("out", s)),
        on_stderr=lambda s: seen.append(("err", s)),
    )
    assert result == CommandResult(stdout="42\n", stderr="warn\n", exit_code=3, pid=7)
    assert not result.ok  # a nonzero exit is a result, not an exception
    assert seen == [("out", "42\n"), ("err", "warn\n")]
    assert json.loads(fake.last.content) == {
        "cmd": "python3 -c 'print(6*7)'",
        "env": {"A": "1"},
        "cwd": "/tmp",
        "user": "root",
        "timeout": 5,
        "stdin": "in",
        "background": False,
    }


def test_run_argv_form(fake: FakeApi, sb: Sandbox) -> None:
    fake.on("POST", CMDS, _events(ndjson({"type": "exit", "exit_code": 0})))
    assert sb.commands.run(argv=["ls", "-la"]).ok
    body = json.loads(fake.last.content)
    assert body["argv"] == ["ls", "-la"] and "cmd" not in body


@pytest.mark.parametrize(
    "kwargs", [{}, {"cmd": "ls", "argv": ["ls"]}, {"argv": "ls"}, {"argv": []}]
)
def test_run_needs_exactly_one_of_cmd_or_argv(fake: FakeApi, sb: Sandbox, kwargs: dict) -> None:
    before = len(fake.requests)
    with pytest.raises(InvalidRequest):
        sb.commands.run(**kwargs)
    assert len(fake.requests) == before


def test_events_split_anywhere_even_inside_utf8(fake: FakeApi, sb: Sandbox) -> None:
    body = ndjson(
        {"type": "stdout", "data": "héllo → wörld 🎉\n"},
        {"type": "stdout", "data": "second"},
        {"type": "exit", "exit_code": 0, "signal": None, "timed_out": False},
    )
    body = body.replace(b"\\u00e9", "é".encode()).replace(b"\\ud83c\\udf89", "🎉".encode())
    chunks = [body[i : i + 1] for i in range(len(body))]  # one byte at a time
    fake.on("POST", CMDS, _events(*chunks))
    assert sb.commands.run("x").stdout.startswith("h")
    raw = json.dumps({"type": "stdout", "data": "é🎉"}, ensure_ascii=False).encode() + b"\n"
    for cut in range(1, len(raw)):
        decoder = NdjsonDecoder(parse_event)
        events = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:]) + decoder.finish()
        assert events == [Stdout("é🎉")]


def test_last_line_without_newline_is_decoded() -> None:
    decoder = NdjsonDecoder(parse_event)
    assert decoder.feed(b'{"type": "exit", "exit_code": 1}') == []
    assert decoder.finish() == [Exit(exit_code=1)]


def test_unknown_events_are_skipped_and_timeouts_reported(fake: FakeApi, sb: Sandbox) -> None:
    fake.on(
        "POST",
        CMDS,
        _events(
            ndjson(
                {"type": "future-thing", "x": 1},
                {"type": "exit", "exit_code": 137, "signal": "SIGKILL", "timed_out": True},
            )
        ),
    )
    result = sb.commands.run("sleep 9", timeout=1)
    assert (result.exit_code, result.signal, result.timed_out) == (137, "SIGKILL", True)


def test_error_event_raises_after_the_output_before_it(fake: FakeApi, sb: Sandbox) -> None:
    fake.on(
        "POST",
        CMDS,
        _events(
            ndjson(
                {"type": "stdout", "data": "partial"},
                {"type": "error", "code": "agent_error", "message": "agent died"},
            )
        ),
    )
    seen: list[str] = []
    with pytest.raises(AgentFailure, match="agent died"):
        sb.commands.run("x", on_stdout=seen.append)
    assert seen == ["partial"]


def test_stream_ending_without_exit_is_a_connection_error(fake: FakeApi, sb: Sandbox) -> None:
    fake.on("POST", CMDS, _events(ndjson({"type": "stdout", "data": "a"})))
    with pytest.raises(ApiConnectionError, match="before the process exited"):
        sb.commands.run("x")


def test_foreground_http_errors_map(fake: FakeApi, sb: Sandbox) -> None:
    fake.on("POST", CMDS, error(404, "sandbox_not_found"))
    with pytest.raises(Exception) as caught:
        sb.commands.run("x")
    assert type(caught.value).__name__ == "SandboxNotFound"


def test_background_handle(fake: FakeApi, sb: Sandbox) -> None:
    fake.on("POST", CMDS, httpx.Response(201, json=PROCESS))
    fake.on(
        "GET",
        f"{CMDS}/12/events",
        _events(
            ndjson(
                {"type": "started", "pid": 12},
                {"type": "stdout", "data": "1\n2\n"},
                {"type": "stdout", "data": "3\n"},
                {"type": "exit", "exit_code": 0, "signal": None, "timed_out": False},
            )
        ),
    )
    fake.on("POST", f"{CMDS}/12/stdin", httpx.Response(204))
    fake.on("POST", f"{CMDS}/12/signal", httpx.Response(204))

    h = sb.commands.run("seq 3", background=True, keep_stdin_open=True, tag="t")
    assert h.pid == 12 and h.info is not None and h.info.running
    assert json.loads(fake.last.content) == {
        "cmd": "seq 3",
        "env": {},
        "background": True,
        "keep_stdin_open": True,
        "tag": "t",
    }
    with h.stream() as events:
        assert list(events) == [
            Started(12),
            Stdout("1\n2\n"),
            Stdout("3\n"),
            Exit(0, None, False),
        ]
    assert h.wait().stdout == "1\n2\n3\n"

    h.send_stdin("héllo")
    assert fake.last.content == "héllo".encode() and "eof" not in fake.last.url.params
    assert fake.last.headers["content-type"] == "application/octet-stream"
    h.send_stdin(b"", eof=True)
    assert fake.last.url.params["eof"] == "true"

    assert h.kill() is True
    assert json.loads(fake.last.content) == {"signal": "SIGKILL"}
    sb.commands.signal(12, "SIGTERM")
    assert json.loads(fake.last.content) == {"signal": "SIGTERM"}
    fake.on("POST", f"{CMDS}/12/signal", error(404, "process_not_found"))
    assert sb.commands.kill(12) is False


def test_list_and_connect(fake: FakeApi, sb: Sandbox) -> None:
    fake.on("GET", CMDS, httpx.Response(200, json={"processes": [PROCESS]}))
    (proc,) = sb.commands.list()
    assert proc.pid == 12 and proc.started_at is not None
    assert sb.commands.connect(12).info == proc
    with pytest.raises(ProcessNotFound):
        sb.commands.connect(99)


def test_closing_a_stream_early_stops_reading(fake: FakeApi, sb: Sandbox) -> None:
    fake.on("POST", CMDS, httpx.Response(201, json=PROCESS))
    fake.on(
        "GET",
        f"{CMDS}/12/events",
        _events(ndjson({"type": "stdout", "data": "a"}), ndjson({"type": "stdout", "data": "b"})),
    )
    stream = sb.commands.run("x", background=True).stream()
    assert next(stream) == Stdout("a")
    stream.close()
    assert list(stream) == []
    assert isinstance(Stderr("x"), Stderr)
