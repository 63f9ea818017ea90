"""AgentClient against an in-process fake agent: error mapping, connection loss, aborts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from atelier.agent.protocol import Connection, Data, Eof, Msg, Stream
from atelier.core.agent_client import AgentClient, Exit, Output, Started
from atelier.errors import (
    AgentFailure,
    AtelierError,
    FileNotFound,
    InvalidRequest,
    IsADirectory,
    ProcessNotFound,
)

Handler = Callable[[Stream, dict[str, Any]], Awaitable[None]]


class FakeAgent:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ops: dict[str, Handler] = {}
        self.log: list[tuple[str, Any]] = []
        self.connections: list[Connection] = []
        self.server: asyncio.AbstractServer | None = None
        self.on("ping", self._ping)

    def on(self, op: str, handler: Handler) -> None:
        self.ops[op] = handler

    async def _ping(self, stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_msg({"pong": True, "protocol": 1, "pid": 4242})

    async def _handle(self, stream: Stream, req: dict[str, Any]) -> None:
        await self.ops[req["op"]](stream, req)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, self._handle)
        self.connections.append(conn)
        await conn.serve()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._client, str(self.path))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in self.connections:
            await conn.aclose()


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeAgent]:
    agent = FakeAgent(tmp_path / "agent.sock")
    await agent.start()
    yield agent
    await agent.stop()


@pytest.fixture
async def client(fake: FakeAgent) -> AsyncIterator[AgentClient]:
    c = await AgentClient.connect(fake.path, timeout=5)
    yield c
    await c.close()


async def test_connect_fails_after_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(AgentFailure, match="did not answer"):
        await AgentClient.connect(tmp_path / "nothing.sock", timeout=0.3)
    assert time.monotonic() - started < 2


async def test_connect_retries_until_the_agent_is_up(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path / "late.sock")

    async def start_later() -> None:
        await asyncio.sleep(0.3)
        await agent.start()

    starter = asyncio.create_task(start_later())
    client = await AgentClient.connect(agent.path, timeout=5)
    try:
        assert (await client.ping()).pid == 4242
        assert client.is_open
    finally:
        await client.close()
        await starter
        await agent.stop()
    assert not client.is_open


async def test_connect_fails_if_ping_is_not_answered(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path / "mute.sock")

    async def mute(stream: Stream, req: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    agent.on("ping", mute)
    await agent.start()
    try:
        with pytest.raises(AgentFailure):
            await AgentClient.connect(agent.path, timeout=0.3)
    finally:
        await agent.stop()


async def test_connect_retries_a_lost_ping_on_a_new_connection(tmp_path: Path) -> None:
    """A virtio-serial guest may drop the first ping of a quick reconnect: the
    client must not wait for it until the overall timeout."""
    agent = FakeAgent(tmp_path / "lossy.sock")
    pings = 0

    async def lose_the_first(stream: Stream, req: dict[str, Any]) -> None:
        nonlocal pings
        pings += 1
        if pings == 1:
            await asyncio.Event().wait()
        await stream.send_msg({"pong": True, "protocol": 1, "pid": 7})

    agent.on("ping", lose_the_first)
    await agent.start()
    try:
        client = await AgentClient.connect(agent.path, timeout=60)
        try:
            assert (await client.ping()).pid == 7
        finally:
            await client.close()
        assert pings == 3 and len(agent.connections) == 2  # lost, answered, ours
    finally:
        await agent.stop()


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("file_not_found", FileNotFound),
        ("is_a_directory", IsADirectory),
        ("process_not_found", ProcessNotFound),
        ("invalid_request", InvalidRequest),
        ("internal", AgentFailure),
        ("brand_new_code", AtelierError),
    ],
)
async def test_agent_errors_become_atelier_errors(
    fake: FakeAgent, client: AgentClient, code: str, cls: type[AtelierError]
) -> None:
    async def fail(stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_error(code, f"it failed: {req['path']}", path=req["path"])

    fake.on("fs.stat", fail)
    with pytest.raises(cls) as info:
        await client.stat("/x")
    assert type(info.value) is cls
    assert "it failed: /x" in info.value.message
    if cls is not AgentFailure:
        assert info.value.details == {"path": "/x"}


async def test_exec_events_and_lost_connection(fake: FakeAgent, client: AgentClient) -> None:
    gate = asyncio.Event()

    async def exec_(stream: Stream, req: dict[str, Any]) -> None:
        fake.log.append(("exec", req))
        await stream.send_msg({"type": "started", "pid": 7})
        await stream.send(b"out", 1)
        await stream.send(b"err", 2)
        await stream.send_eof(1)
        await stream.send_eof(2)
        if req["argv"] == ["hang"]:
            await gate.wait()
        await stream.send_msg({"type": "exit", "exit_code": 3, "signal": None, "timed_out": False})

    fake.on("exec", exec_)
    session = await client.exec(argv=["x"], env={"A": "1"}, cwd="/tmp", timeout=2.5, tag="t")
    assert session.pid == 7
    events = [event async for event in session]
    assert events == [
        Started(7),
        Output(1, b"out"),
        Output(2, b"err"),
        Exit(3, None, False),
    ]
    assert fake.log[0][1] == {
        "op": "exec",
        "argv": ["x"],
        "env": {"A": "1"},
        "cwd": "/tmp",
        "timeout": 2.5,
        "stdin": False,
        "background": False,
        "tag": "t",
    }
    await session.detach()  # harmless after the exit

    session = await client.exec(argv=["hang"])
    assert await anext(session) == Started(7)
    assert await anext(session) == Output(1, b"out")
    await fake.stop()  # the agent goes away mid-stream
    with pytest.raises(AgentFailure, match="lost the connection"):
        async for _ in session:
            pass
    assert not client.is_open
    with pytest.raises(AgentFailure):
        await client.ping()


async def test_collect_without_exit_is_a_failure(fake: FakeAgent, client: AgentClient) -> None:
    async def attach(stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_msg({"type": "started", "pid": req["pid"]})
        await stream.send(b"partial", 1)
        # then the stream just closes (another attacher took over)

    fake.on("process.attach", attach)
    session = await client.attach(5)
    with pytest.raises(AgentFailure, match="before it exited"):
        await session.collect()


async def test_write_file_abort_closes_without_eof(fake: FakeAgent, client: AgentClient) -> None:
    outcome: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()

    async def write(stream: Stream, req: dict[str, Any]) -> None:
        total = 0
        while True:
            event = await stream.recv()
            if event is None:
                outcome.set_result((total, False))
                return
            if isinstance(event, Eof):
                outcome.set_result((total, True))
                await stream.send_msg({"path": req["path"]})
                return
            assert isinstance(event, Data)
            total += len(event.data)

    fake.on("fs.write", write)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        await client.write_file("/f", chunks())
    assert await asyncio.wait_for(outcome, 2) == (1000, False)


async def test_write_file_reports_the_agents_error(fake: FakeAgent, client: AgentClient) -> None:
    async def refuse(stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_error("is_a_directory", f"Is a directory: {req['path']}")

    fake.on("fs.write", refuse)

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"b" * 65536

    with pytest.raises(IsADirectory):
        await asyncio.wait_for(client.write_file("/d", endless()), 5)


async def test_write_stdin_and_watch_close(fake: FakeAgent, client: AgentClient) -> None:
    received: list[Any] = []
    closed = asyncio.Event()

    async def stdin(stream: Stream, req: dict[str, Any]) -> None:
        while True:
            event = await stream.recv()
            received.append(event)
            if isinstance(event, Eof | Msg):
                await stream.send_msg({"ok": True})
                return

    async def watch(stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_msg({"type": "ready"})
        await stream.send_msg({"type": "event", "event": "create", "path": "/w/a", "is_dir": False})
        await stream.remote_closed_event.wait()
        closed.set()

    fake.on("process.stdin", stdin)
    fake.on("fs.watch", watch)
    await client.write_stdin(3, b"data")
    await client.write_stdin(3, b"", eof=True)
    assert received == [Data(0, b"data"), Msg({"type": "end"}), Eof(0)]

    events = client.watch("/w")
    first = await anext(events)
    assert first["path"] == "/w/a"
    await events.aclose()
    await asyncio.wait_for(closed.wait(), 2)


async def test_read_file_early_close(fake: FakeAgent, client: AgentClient) -> None:
    closed = asyncio.Event()

    async def read(stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_msg({"size": 10 * 65536})
        with contextlib.suppress(Exception):
            for _ in range(10):
                await stream.send(b"r" * 65536, 1)
            await stream.send_eof(1)
        await stream.remote_closed_event.wait()
        closed.set()

    fake.on("fs.read", read)
    size, chunks = await client.read_file("/big")
    assert size == 655360
    assert len(await anext(chunks)) == 65536
    await chunks.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(closed.wait(), 2)
