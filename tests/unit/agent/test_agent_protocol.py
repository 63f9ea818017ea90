"""Unit tests of the wire protocol (two in-process Connections over a socketpair)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from atelier.agent.protocol import (
    HEADER,
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    Connection,
    ConnectionLost,
    Data,
    Eof,
    Kind,
    RemoteError,
    Stream,
    StreamClosed,
)

Handler = Callable[[Stream, dict[str, Any]], Awaitable[None]]


class Pair:
    def __init__(self, host: Connection, agent: Connection, tasks: list[asyncio.Task[None]]):
        self.host = host
        self.agent = agent
        self.tasks = tasks


@pytest.fixture
async def make_pair() -> AsyncIterator[Callable[[Handler], Awaitable[Pair]]]:
    pairs: list[Pair] = []

    async def make(handler: Handler) -> Pair:
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_unix_connection(sock=a)
        rb, wb = await asyncio.open_unix_connection(sock=b)
        host, agent = Connection(ra, wa), Connection(rb, wb, handler)
        tasks = [asyncio.create_task(host.serve()), asyncio.create_task(agent.serve())]
        pair = Pair(host, agent, tasks)
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        await pair.host.aclose()
        await pair.agent.aclose()
        await asyncio.gather(*pair.tasks, return_exceptions=True)


async def test_request_reply(make_pair: Callable[[Handler], Awaitable[Pair]]) -> None:
    async def echo(stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_msg({"echo": req})

    pair = await make_pair(echo)
    assert await pair.host.request("hello", x=1) == {"echo": {"op": "hello", "x": 1}}


async def test_errors_end_the_stream(make_pair: Callable[[Handler], Awaitable[Pair]]) -> None:
    async def handler(stream: Stream, req: dict[str, Any]) -> None:
        if req["op"] == "typed":
            await stream.send_error("file_not_found", "no such file: /x", path="/x")
            return
        raise ValueError("boom")

    pair = await make_pair(handler)
    with pytest.raises(RemoteError) as info:
        await pair.host.request("typed")
    assert (info.value.code, info.value.details) == ("file_not_found", {"path": "/x"})
    with pytest.raises(RemoteError) as info:
        await pair.host.request("crash")
    assert info.value.code == "internal" and "boom" in info.value.message


async def test_sender_blocks_without_credit(
    make_pair: Callable[[Handler], Awaitable[Pair]],
) -> None:
    gate = asyncio.Event()
    received = asyncio.get_running_loop().create_future()

    async def slow_reader(stream: Stream, req: dict[str, Any]) -> None:
        await gate.wait()
        total = 0
        while True:
            event = await stream.recv()
            if isinstance(event, Eof):
                break
            assert isinstance(event, Data)
            total += len(event.data)
        received.set_result(total)
        await stream.send_msg({"ok": True})

    pair = await make_pair(slow_reader)
    stream = await pair.host.open("upload")
    size = 3 * INITIAL_WINDOW + 123
    sender = asyncio.create_task(stream.send(b"x" * size))
    await asyncio.sleep(0.2)
    assert not sender.done(), "the sender must wait for window credit"
    assert stream.send_credit == 0
    # exactly one window is in flight; more credit comes only once the reader reads
    assert stream.send_nowait(b"y") == 0
    gate.set()
    await asyncio.wait_for(sender, 5)
    await stream.send_eof()
    assert await stream.recv_msg() == {"ok": True}
    assert await received == size


async def test_send_nowait_takes_only_what_credit_allows(
    make_pair: Callable[[Handler], Awaitable[Pair]],
) -> None:
    async def idle(stream: Stream, req: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    pair = await make_pair(idle)
    stream = await pair.host.open("idle")
    assert stream.send_nowait(b"z" * (INITIAL_WINDOW + 10)) == INITIAL_WINDOW
    assert stream.send_credit == 0
    waiter = asyncio.create_task(stream.wait_credit())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await stream.close()  # closing wakes the waiter with StreamClosed
    with pytest.raises(StreamClosed):
        await asyncio.wait_for(waiter, 2)


async def test_many_streams_interleave(make_pair: Callable[[Handler], Awaitable[Pair]]) -> None:
    async def echo_data(stream: Stream, req: dict[str, Any]) -> None:
        while True:
            event = await stream.recv()
            if isinstance(event, Eof):
                await stream.send_eof(1)
                return
            assert isinstance(event, Data)
            await stream.send(event.data, 1)

    pair = await make_pair(echo_data)
    rng = random.Random(7)

    async def one(i: int) -> None:
        payload = bytes([i]) * 100_000 + rng.randbytes(150_000)
        stream = await pair.host.open("echo", i=i)

        async def upload() -> None:
            view = memoryview(payload)
            while view:
                n = rng.randint(1, 3 * MAX_PAYLOAD)
                await stream.send(view[:n])
                view = view[n:]
                if rng.random() < 0.3:
                    await asyncio.sleep(0)
            await stream.send_eof()

        up = asyncio.create_task(upload())
        got = bytearray()
        while True:
            event = await stream.recv()
            if event is None or isinstance(event, Eof):
                break
            assert isinstance(event, Data) and event.channel == 1
            got += event.data
        await up
        await stream.close()
        assert bytes(got) == payload

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(30))), 30)


async def test_connection_loss_fails_pending_streams(
    make_pair: Callable[[Handler], Awaitable[Pair]],
) -> None:
    async def never(stream: Stream, req: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    pair = await make_pair(never)
    streams = [await pair.host.open("wait") for _ in range(3)]
    pending = [asyncio.create_task(s.recv()) for s in streams]
    blocked = streams[0]
    blocked.send_nowait(b"a" * INITIAL_WINDOW)
    sender = asyncio.create_task(blocked.send(b"more"))
    await asyncio.sleep(0.05)
    await pair.agent.aclose()  # the agent side goes away
    for task in pending:
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(task, 2)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(sender, 2)
    assert not pair.host.is_open
    with pytest.raises(ConnectionLost):
        await pair.host.open("again")
    await streams[1].close()  # closing after the loss is harmless


async def test_local_close_ends_a_pending_recv(
    make_pair: Callable[[Handler], Awaitable[Pair]],
) -> None:
    async def never(stream: Stream, req: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    pair = await make_pair(never)
    stream = await pair.host.open("wait")
    pending = asyncio.create_task(stream.recv())
    await asyncio.sleep(0.01)
    await stream.close()
    assert await asyncio.wait_for(pending, 2) is None


async def test_send_error_wakes_a_blocked_sender(
    make_pair: Callable[[Handler], Awaitable[Pair]],
) -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream, req: dict[str, Any]) -> None:
        async def flood() -> None:
            try:
                await stream.send(b"o" * (2 * INITIAL_WINDOW), 1)
                outcome.set_result("sent")
            except StreamClosed:
                outcome.set_result("closed")

        task = asyncio.create_task(flood())
        await asyncio.sleep(0.1)
        await stream.send_error("invalid_request", "stop")
        await task

    pair = await make_pair(handler)
    stream = await pair.host.open("flood")
    assert await asyncio.wait_for(outcome, 2) == "closed"
    with pytest.raises(RemoteError):
        while await stream.recv() is not None:
            pass


async def _raw_agent(handler: Handler) -> tuple[Connection, socket.socket, asyncio.Task[None]]:
    a, b = socket.socketpair()
    rb, wb = await asyncio.open_unix_connection(sock=b)
    agent = Connection(rb, wb, handler)
    a.setblocking(False)
    return agent, a, asyncio.create_task(agent.serve())


async def _noop(stream: Stream, req: dict[str, Any]) -> None:
    await asyncio.Event().wait()


def _frame(sid: int, kind: int, channel: int, payload: bytes) -> bytes:
    return HEADER.pack(sid, kind, channel, len(payload)) + payload


@pytest.mark.parametrize(
    "frames",
    [
        # more DATA than the window allows
        [_frame(1, Kind.OPEN, 0, b'{"op":"x"}')]
        + [_frame(1, Kind.DATA, 0, b"d" * MAX_PAYLOAD)] * (INITIAL_WINDOW // MAX_PAYLOAD + 1),
        [_frame(1, Kind.OPEN, 0, b"not json")],
        [_frame(1, Kind.OPEN, 0, b"[1, 2]")],
        [_frame(1, Kind.OPEN, 0, b'{"op":"x"}'), _frame(1, Kind.OPEN, 0, b'{"op":"x"}')],
        [_frame(1, Kind.OPEN, 0, b'{"op":"x"}'), _frame(1, Kind.WINDOW, 0, b"\x01")],
        [_frame(1, Kind.OPEN, 0, b'{"op":"x"}'), _frame(1, Kind.MSG, 0, b"{")],
    ],
    ids=["window-overrun", "bad-json", "not-object", "reopen", "short-window", "bad-msg"],
)
async def test_protocol_violations_end_the_connection(frames: list[bytes]) -> None:
    agent, raw, serving = await _raw_agent(_noop)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(raw, b"".join(frames))
    await asyncio.wait_for(serving, 2)  # serve() returns (it does not raise)
    assert not agent.is_open
    assert await asyncio.wait_for(loop.sock_recv(raw, 100), 2) == b""  # the agent hung up
    raw.close()
    await agent.aclose()


async def test_frames_after_close_are_ignored() -> None:
    replies: list[dict[str, Any]] = []

    async def reply(stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_msg({"ok": req["op"]})

    agent, raw, serving = await _raw_agent(reply)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(raw, _frame(1, Kind.OPEN, 0, b'{"op":"a"}'))
    await asyncio.sleep(0.05)
    # late frames for the finished stream 1, then a new stream
    await loop.sock_sendall(
        raw,
        _frame(1, Kind.DATA, 0, b"late")
        + _frame(1, Kind.CLOSE, 0, b"")
        + _frame(2, Kind.OPEN, 0, b'{"op":"b"}'),
    )
    buf = b""
    while len(replies) < 2:
        buf += await asyncio.wait_for(loop.sock_recv(raw, 65536), 2)
        while len(buf) >= HEADER.size:
            _sid, kind, _ch, length = HEADER.unpack_from(buf)
            if len(buf) < HEADER.size + length:
                break
            payload, buf = buf[HEADER.size : HEADER.size + length], buf[HEADER.size + length :]
            if kind == Kind.MSG:
                replies.append(json.loads(payload))
    assert replies == [{"ok": "a"}, {"ok": "b"}]
    assert agent.is_open
    raw.close()
    await asyncio.wait_for(serving, 2)
