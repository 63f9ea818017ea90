"""Local port forwarding (``ssh -L``, ``-D``, VS Code's tunnels): ``direct-tcpip``
channels relayed to a TCP connection made by the agent inside the sandbox.

The tunnel is opened before the channel is confirmed, so a closed port is an
ordinary "open failed: connect failed" on the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial

import asyncssh
from asyncssh.stream import SSHTCPStreamSession

from ..core.agent_client import TcpTunnel
from ..errors import AtelierError
from .access import SandboxAccess

__all__ = ["open_direct_tcpip", "relay_tunnel"]

log = logging.getLogger("atelier.sshgw")

READ_SIZE = 64 * 1024
_LOOPBACK_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost"}


def inside_host(dest_host: str) -> str:
    """The host the agent connects to: loopback names mean the sandbox's own loopback."""
    return "127.0.0.1" if dest_host.lower() in _LOOPBACK_NAMES else dest_host


async def open_direct_tcpip(
    access: SandboxAccess, dest_host: str, dest_port: int
) -> SSHTCPStreamSession[bytes]:
    host = inside_host(dest_host)
    try:
        _, agent = await access.agent()
        tunnel = await agent.open_tunnel(dest_port, host)
    except AtelierError as exc:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, exc.message) from None
    if (host, dest_port) not in access.forwarded:  # one event per connection and port
        access.forwarded.add((host, dest_port))
        await access.record(session="direct-tcpip", host=host, port=dest_port)
    return SSHTCPStreamSession(partial(_held_relay, access, tunnel))


async def _held_relay(
    access: SandboxAccess,
    tunnel: TcpTunnel,
    reader: asyncssh.SSHReader[bytes],
    writer: asyncssh.SSHWriter[bytes],
) -> None:
    with access.attached():  # an open tunnel keeps the sandbox from idling
        await relay_tunnel(tunnel, reader, writer)


async def relay_tunnel(
    tunnel: TcpTunnel, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
) -> None:
    """Carry bytes between an agent tunnel and an SSH channel until both ends closed
    (also used by remote and agent forwarding)."""

    async def upstream() -> None:
        while data := await reader.read(READ_SIZE):
            await tunnel.write(data)
        await tunnel.write_eof()

    async def downstream() -> None:
        while data := await tunnel.read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(upstream()), loop.create_task(downstream())]
    try:
        # both directions until each side ends; an error in one ends both
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                log.debug("tunnel ended: %r", task.exception())
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await tunnel.close()
        writer.close()
