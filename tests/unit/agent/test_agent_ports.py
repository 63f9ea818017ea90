"""tcp.connect (tunnels) and ports.list / ports.watch against a real agent subprocess.

The agent runs as a host process here, so "inside the sandbox" is the host's
loopback: the tests listen on 127.0.0.1 themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator

import pytest

from atelier.agent.ports import parse_proc_net
from atelier.core.agent_client import AgentClient, PortUnreachable
from atelier.errors import InvalidRequest


@contextlib.asynccontextmanager
async def serve(handler) -> AsyncIterator[int]:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()  # half-close answered by a half-close
    await writer.drain()
    writer.close()


async def read_all(tunnel) -> bytes:  # type: ignore[no-untyped-def]
    out = bytearray()
    while chunk := await tunnel.read():
        out += chunk
    return bytes(out)


async def test_tunnel_relays_both_ways_with_half_close(client: AgentClient) -> None:
    async with serve(echo) as port:
        tunnel = await client.open_tunnel(port)
        async with tunnel:
            await tunnel.write(b"hello ")
            await tunnel.write(b"world")
            await tunnel.write_eof()
            assert await asyncio.wait_for(read_all(tunnel), 10) == b"hello world"


async def test_tunnel_large_transfer_under_flow_control(client: AgentClient) -> None:
    payload = os.urandom(3 * 1024 * 1024) * 4  # 12 MiB: several windows each way
    async with serve(echo) as port:
        tunnel = await client.open_tunnel(port)
        async with tunnel:

            async def send() -> None:
                view = memoryview(payload)
                for i in range(0, len(view), 1024 * 1024):
                    await tunnel.write(view[i : i + 1024 * 1024])
                await tunnel.write_eof()

            sender = asyncio.ensure_future(send())
            got = await asyncio.wait_for(read_all(tunnel), 60)
            await sender
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def test_server_eof_first_then_client_keeps_sending(client: AgentClient) -> None:
    received = asyncio.get_running_loop().create_future()

    async def greet_then_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner")
        writer.write_eof()  # the server is done talking, still listens
        await writer.drain()
        received.set_result(await reader.read())
        writer.close()

    async with serve(greet_then_read) as port, await client.open_tunnel(port) as tunnel:
        assert await asyncio.wait_for(read_all(tunnel), 10) == b"banner"
        await tunnel.write(b"late data")
        await tunnel.write_eof()
        assert await asyncio.wait_for(received, 10) == b"late data"


async def test_many_concurrent_tunnels(client: AgentClient) -> None:
    async with serve(echo) as port:

        async def one(i: int) -> bytes:
            async with await client.open_tunnel(port) as tunnel:
                await tunnel.write(f"conn-{i}".encode() * 100)
                await tunnel.write_eof()
                return await read_all(tunnel)

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 30)
    assert results == [f"conn-{i}".encode() * 100 for i in range(20)]


async def test_closing_the_tunnel_closes_the_socket(client: AgentClient) -> None:
    closed = asyncio.get_running_loop().create_future()

    async def wait_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closed.set_result(await reader.read())
        writer.close()

    async with serve(wait_eof) as port:
        tunnel = await client.open_tunnel(port)
        await tunnel.write(b"x")
        await tunnel.close()
        assert await asyncio.wait_for(closed, 10) == b"x"


async def test_connection_refused_is_a_precise_error(client: AgentClient) -> None:
    with socket.socket() as s:  # a port that is surely closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PortUnreachable) as info:
        await client.open_tunnel(port)
    assert info.value.code == "connection_refused"
    assert info.value.status == 502
    assert str(port) in info.value.message


@pytest.mark.parametrize("port", [0, 70000, "80", True])
async def test_invalid_port(client: AgentClient, port: object) -> None:
    with pytest.raises(InvalidRequest):
        await client.open_tunnel(port)  # type: ignore[arg-type]


async def test_ports_list_shows_listener_and_owner(client: AgentClient) -> None:
    async with serve(echo) as port:
        ports = await client.list_ports()
        mine = [p for p in ports if p["port"] == port]
        assert mine, ports
        assert mine[0]["address"] == "127.0.0.1"
        assert mine[0]["family"] == "ipv4"
        assert mine[0]["pid"] == os.getpid()
        assert mine[0]["command"] and "python" in mine[0]["command"]
    ports = await client.list_ports(owners=False)
    assert port not in [p["port"] for p in ports]


async def test_ports_watch_reports_opened_and_closed(client: AgentClient) -> None:
    async with client.watch_ports(interval=0.1) as watch:
        before = {p["port"] for p in watch.ports}
        async with serve(echo) as port:
            assert port not in before

            async def next_for(kind: str) -> dict[str, object]:
                async for event in watch:
                    if event["port"] == port and event["type"] == kind:
                        return dict(event)
                raise AssertionError("watch ended")

            opened = await asyncio.wait_for(next_for("opened"), 10)
            assert opened["address"] == "127.0.0.1"
        closed = await asyncio.wait_for(next_for("closed"), 10)
        assert closed["port"] == port


def test_parse_proc_net() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
        "   uid  timeout inode\n"
        "   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "  1000        0 11 1 0000000000000000 100 0 0 10 0\n"
        "   1: 0100007F:0BB9 0100007F:A000 01 00000000:00000000 00:00000000 00000000"
        "  1000        0 12 1 0000000000000000 100 0 0 10 0\n"
    )
    assert parse_proc_net(text, "ipv4") == [
        {"port": 3000, "address": "127.0.0.1", "family": "ipv4", "inode": 11}
    ]
    text6 = (
        "  sl  local_address                         remote_address"
        "                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A"
        " 00000000:00000000 00:00000000 00000000     0        0 42 1 0 100 0 0 10 0\n"
    )
    assert parse_proc_net(text6, "ipv6") == [
        {"port": 8080, "address": "::1", "family": "ipv6", "inode": 42}
    ]
