"""A small DNS forwarder for hosts whose resolver is a loopback stub.

A host with ``nameserver 127.0.0.53`` (systemd-resolved) or another loopback
resolver cannot hand that address to sandboxes: their ``127.0.0.1`` is their
own. The :class:`NetworkManager` then runs this forwarder in the server on
one address of the sandbox pool (the last /30's ``.2``, put on the host's
``lo``; never leased), names it in the sandboxes' ``/etc/resolv.conf``, and
opens exactly UDP/TCP port 53 of that address to them in the firewall.

It relays DNS messages as opaque bytes (no parsing, so no DNS library): each
UDP query goes to the upstreams in order on a fresh socket (a random source
port per query) until one answers within :data:`UPSTREAM_TIMEOUT`; a TCP
connection is relayed, message by message, to a TCP connection to an
upstream. At most :data:`MAX_INFLIGHT` UDP queries are in flight; more are
dropped (the client retries). Answers come back unchanged, so the upstream's
own policy (and cache) applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from collections.abc import Coroutine, Sequence
from typing import Any, cast

__all__ = ["MAX_INFLIGHT", "UPSTREAM_TIMEOUT", "DnsForwarder"]

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 3.0
MAX_INFLIGHT = 256
TCP_IDLE_TIMEOUT = 30.0
_HEADER = 12  # a DNS message is at least its header


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, fwd: DnsForwarder) -> None:
        self.fwd = fwd
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < _HEADER or len(self.fwd._tasks) >= MAX_INFLIGHT:
            return
        self.fwd._spawn(self._answer(data, addr))

    async def _answer(self, query: bytes, addr: tuple[str, int]) -> None:
        answer = await self.fwd.query_udp(query)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


class _OneShot(asyncio.DatagramProtocol):
    """A connected UDP socket waiting for the answer to one query."""

    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= _HEADER and data[:2] == self.query_id and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class DnsForwarder:
    """UDP and TCP on ``(address, port)``, relayed to ``upstreams`` (port 53)."""

    def __init__(
        self,
        address: ipaddress.IPv4Address,
        upstreams: Sequence[ipaddress.IPv4Address],
        *,
        port: int = 53,
        upstream_port: int = 53,
    ) -> None:
        self.address = address
        self.port = port
        self.upstreams = list(upstreams)
        self.upstream_port = upstream_port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._udp is not None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpServer(self), local_addr=(str(self.address), self.port)
        )
        try:
            self._tcp = await asyncio.start_server(
                self._serve_tcp, str(self.address), self.port, reuse_address=True
            )
        except BaseException:
            transport.close()
            raise
        self._udp = transport
        log.info(
            "DNS forwarder on %s:%d -> %s",
            self.address,
            self.port,
            ", ".join(str(u) for u in self.upstreams),
        )

    async def aclose(self) -> None:
        udp, self._udp = self._udp, None
        tcp, self._tcp = self._tcp, None
        if udp is not None:
            udp.close()
        if tcp is not None:
            tcp.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if tcp is not None:
            with contextlib.suppress(Exception):
                await tcp.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- UDP ---------------------------------------------------------------------------
    async def query_udp(self, query: bytes) -> bytes | None:
        """The first upstream answer to ``query``; None if none answered."""
        loop = asyncio.get_running_loop()
        for upstream in self.upstreams:
            transport = None
            try:
                transport, proto = await loop.create_datagram_endpoint(
                    lambda: _OneShot(query[:2]),
                    remote_addr=(str(upstream), self.upstream_port),
                )
                transport.sendto(query)
                return await asyncio.wait_for(proto.answer, UPSTREAM_TIMEOUT)
            except (TimeoutError, OSError):
                continue
            finally:
                if transport is not None:
                    transport.close()
        return None

    # -- TCP ---------------------------------------------------------------------------
    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                query = await _read_message(reader, TCP_IDLE_TIMEOUT)
                if query is None:
                    return
                if upstream is None:
                    upstream = await self._connect_tcp()
                    if upstream is None:
                        return
                up_reader, up_writer = upstream
                up_writer.write(struct.pack("!H", len(query)) + query)
                await up_writer.drain()
                answer = await _read_message(up_reader, UPSTREAM_TIMEOUT)
                if answer is None:
                    return
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            return
        finally:
            if task is not None:
                self._tasks.discard(task)
            if upstream is not None:
                upstream[1].close()
            writer.close()

    async def _connect_tcp(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for upstream in self.upstreams:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(str(upstream), self.upstream_port),
                    UPSTREAM_TIMEOUT,
                )
            except (TimeoutError, OSError):
                continue
        return None


async def _read_message(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """One length-prefixed DNS message; None at EOF or timeout."""
    try:
        head = await asyncio.wait_for(reader.readexactly(2), timeout)
        (length,) = struct.unpack("!H", head)
        if length < _HEADER:
            return None
        return await asyncio.wait_for(reader.readexactly(length), timeout)
    except (TimeoutError, asyncio.IncompleteReadError):
        return None
