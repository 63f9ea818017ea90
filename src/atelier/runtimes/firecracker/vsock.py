"""Host side of Firecracker's hybrid vsock.

Firecracker exposes the guest's virtio-vsock device on the host as one unix
socket (``Vsock.uds_path``). To reach a guest port the host connects to that
socket and sends ``CONNECT <port>\\n``; Firecracker forwards the connection to
the guest listener on that vsock port and answers ``OK <host port>\\n``, after
which the unix stream carries the guest connection's bytes both ways. If
nothing listens on the port in the guest, Firecracker closes the connection
without an answer.

:func:`open_connection` does that handshake and returns the usual asyncio
stream pair. Its failures are :class:`VsockHandshakeError`, a
``ConnectionError`` (so an ``OSError``): callers that retry on ``OSError`` until
the agent is up (``AgentClient.connect``) keep working unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

__all__ = ["AGENT_PORT", "VsockHandshakeError", "open_connection"]

AGENT_PORT = 1024  # the guest vsock port the Atelier agent listens on
_MAX_ANSWER = 64  # "OK 4294967295\n" is 14 bytes


class VsockHandshakeError(ConnectionError):
    """The ``CONNECT``/``OK`` handshake with Firecracker's vsock socket failed."""


async def open_connection(
    uds_path: str | os.PathLike[str],
    port: int,
    *,
    timeout: float = 5.0,
    limit: int = 2**16,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to guest vsock ``port`` through Firecracker's socket ``uds_path``.

    Returns ``(reader, writer)`` positioned just after Firecracker's ``OK``
    line; any guest bytes that arrived with it stay buffered in ``reader``.
    """
    if not 0 < port < 2**32:
        raise ValueError(f"vsock port out of range: {port}")
    path = os.fspath(uds_path)
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(path, limit=limit), timeout
    )
    try:
        writer.write(f"CONNECT {port}\n".encode("ascii"))
        await writer.drain()
        line = await asyncio.wait_for(_read_answer(reader), timeout)
    except BaseException as exc:
        await _close(writer)
        if isinstance(exc, TimeoutError):
            raise VsockHandshakeError(
                f"vsock {path}: no answer to CONNECT {port} within {timeout:g}s"
            ) from exc
        raise
    answer = line.decode("ascii", "replace").strip()
    words = answer.split()
    if len(words) != 2 or words[0] != "OK" or not words[1].isdigit():
        await _close(writer)
        if not answer:
            raise VsockHandshakeError(
                f"vsock {path}: connection closed on CONNECT {port} "
                "(nothing listens on that port in the guest yet)"
            )
        raise VsockHandshakeError(f"vsock {path}: unexpected answer to CONNECT {port}: {answer!r}")
    return reader, writer


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    """One ``\\n``-terminated line of at most ``_MAX_ANSWER`` bytes, read
    byte by byte so nothing after it is consumed from the stream."""
    line = bytearray()
    while len(line) < _MAX_ANSWER:
        byte = await reader.read(1)
        if not byte:
            return bytes(line) if line.endswith(b"\n") else b""
        line += byte
        if byte == b"\n":
            return bytes(line)
    raise VsockHandshakeError(f"vsock answer longer than {_MAX_ANSWER} bytes: {bytes(line)!r}")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
