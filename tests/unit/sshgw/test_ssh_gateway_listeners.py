"""The agent's ``listen``/``accept`` ops (what ``ssh -R`` and ``ssh -A`` stand on),
through the real wire protocol and ``AgentClient``, with the ops served in this
process on a unix socket ("inside the sandbox" is the host's loopback here)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from atelier.agent import listeners
from atelier.agent.common import AgentError
from atelier.agent.listeners import ListenerTable
from atelier.agent.protocol import PROTOCOL_VERSION, Connection, Stream
from atelier.core.agent_client import AgentClient, PortUnreachable
from atelier.errors import InvalidRequest
from atelier.sshgw.remote import bind_address


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AgentClient]:
    table = ListenerTable()
    ops: dict[str, Any] = dict(table.ops)

    async def ping(stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_msg({"pong": True, "protocol": PROTOCOL_VERSION, "pid": os.getpid()})

    ops["ping"] = ping

    async def handle(stream: Stream, req: dict[str, Any]) -> None:
        try:
            await ops[req["op"]](stream, req)
        except AgentError as exc:
            await stream.send_error(exc.code, exc.message)

    conns: list[Connection] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, handle)
        conns.append(conn)
        await conn.serve()

    path = str(tmp_path / "agent.sock")
    server = await asyncio.start_unix_server(on_client, path)
    c = await AgentClient.connect(path, timeout=10)
    try:
        yield c
    finally:
        await c.close()
        server.close()
        for conn in conns:
            await conn.aclose()
        table.close()


async def test_tcp_listener_accepts_and_relays(client: AgentClient) -> None:
    async with await client.listen_tcp(0) as listener:
        assert listener.port and listener.path is None
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        local_port = writer.get_extra_info("sockname")[1]
        accepted = await asyncio.wait_for(anext(aiter(listener)), 10)
        assert (accepted.peer_host, accepted.peer_port) == ("127.0.0.1", local_port)
        tunnel = await listener.accept(accepted)
        async with tunnel:
            writer.write(b"from the sandbox side")
            writer.write_eof()
            assert await asyncio.wait_for(tunnel.read(), 10) == b"from the sandbox side"
            assert await asyncio.wait_for(tunnel.read(), 10) == b""  # EOF passed on
            await tunnel.write(b"answer")
            await tunnel.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b"answer"
        writer.close()
        # a connection can be claimed only once
        with pytest.raises(PortUnreachable):
            await listener.accept(accepted)
    # closing the listener stops listening
    for _ in range(50):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", listener.port)
        except ConnectionRefusedError:
            break
        w.close()
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the port still accepts connections after close()")


async def test_unclaimed_connections_are_closed(
    client: AgentClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listeners, "CLAIM_TIMEOUT", 0.2)
    async with await client.listen_tcp(0) as listener:
        assert listener.port
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        accepted = await asyncio.wait_for(anext(aiter(listener)), 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the agent
        writer.close()
        with pytest.raises(PortUnreachable):
            await listener.accept(accepted)


async def test_taken_port_and_bad_arguments_are_refused(client: AgentClient) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        taken = server.sockets[0].getsockname()[1]
        with pytest.raises(InvalidRequest, match="cannot listen"):
            await client.listen_tcp(taken)
    finally:
        server.close()
    with pytest.raises(InvalidRequest):
        await client.listen_tcp(70000)
    with pytest.raises(InvalidRequest):
        await client._listen(kind="udp")


async def test_unix_listener_private_directory_removed_at_close(client: AgentClient) -> None:
    listener = await client.listen_unix()
    assert listener.path is not None and listener.port is None
    directory = Path(listener.path).parent
    assert directory.name.startswith("atelier-ssh-")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    reader, writer = await asyncio.open_unix_connection(listener.path)
    accepted = await asyncio.wait_for(anext(aiter(listener)), 10)
    tunnel = await listener.accept(accepted)
    await tunnel.write(b"agent request")
    assert await asyncio.wait_for(reader.readexactly(13), 10) == b"agent request"
    writer.write(b"agent answer")
    assert await asyncio.wait_for(tunnel.read(), 10) == b"agent answer"
    await tunnel.close()
    writer.close()
    await listener.close()
    for _ in range(50):
        if not directory.exists():
            break
        await asyncio.sleep(0.05)
    assert not directory.exists()


@pytest.mark.parametrize(
    ("given", "bound"),
    [
        ("", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("LOCALHOST", "127.0.0.1"),
        ("*", "0.0.0.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("10.1.2.3", "10.1.2.3"),
    ],
)
def test_bind_address(given: str, bound: str) -> None:
    assert bind_address(given) == bound


async def test_listener_ends_when_the_connection_goes(tmp_path: Path) -> None:
    """The agent side: a listener whose host went away stops listening."""
    table = ListenerTable()

    async def handle(stream: Stream, req: dict[str, Any]) -> None:
        if req["op"] == "ping":
            await stream.send_msg({"pong": True, "protocol": PROTOCOL_VERSION, "pid": 1})
            return
        with contextlib.suppress(AgentError):
            await table.ops[req["op"]](stream, req)

    conns: list[Connection] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, handle)
        conns.append(conn)
        await conn.serve()

    path = str(tmp_path / "a.sock")
    server = await asyncio.start_unix_server(on_client, path)
    try:
        c = await AgentClient.connect(path, timeout=10)
        listener = await c.listen_tcp(0)
        assert listener.port
        await c.close()
        for _ in range(50):
            if not table._listeners:
                break
            await asyncio.sleep(0.05)
        assert not table._listeners
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", listener.port)
    finally:
        server.close()
        for conn in conns:
            await conn.aclose()
        table.close()
