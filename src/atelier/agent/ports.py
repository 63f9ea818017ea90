"""TCP inside the sandbox: tunnels (``tcp.connect``) and listening ports (``ports.*``).

``tcp.connect {port, host="127.0.0.1", timeout=10}`` opens a TCP connection
from inside the sandbox and relays bytes both ways over the stream: the host's
DATA on channel 0 is written to the socket, the socket's bytes come back as
DATA on channel 1. EOF is honoured each way (the host's EOF on channel 0
becomes ``shutdown(SHUT_WR)``; the socket's EOF becomes EOF on channel 1), and
the stream ends once both directions are finished. The agent answers
``{"type": "connected"}`` first, or fails the stream with
``connection_refused`` / ``connection_timeout`` / ``invalid_request``. Because
the agent's socket is on the host side of the sandbox boundary, a tunnel works
whatever the sandbox's network mode, ``none`` included.

``ports.list`` answers ``{"ports": [{"port", "address", "family", "inode",
"pid", "command"}]}``: the listening TCP sockets (state ``0A``) of
``/proc/net/tcp`` and ``/proc/net/tcp6``; the owning process is found through
``/proc/<pid>/fd`` (``pid``/``command`` are ``null`` when it is not visible).
gVisor fills these files for its own netstack, also under ``--network=none``.

``ports.watch {interval=0.5}`` answers ``{"type": "ready", "ports": [...]}``
and then, polling, one ``{"type": "opened"|"closed", ...port}`` message per
change until the host closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

from .common import AgentError
from .files import run_blocking
from .protocol import Channel, Data, Eof, Stream

__all__ = ["PORT_OPS", "listening_ports", "parse_proc_net", "relay_socket"]

RELAY_CHUNK = 256 * 1024
_LISTEN = "0A"
_MIN_INTERVAL = 0.1


# -- /proc/net/tcp ---------------------------------------------------------------
def _decode_address(text: str, family: str) -> tuple[str, int]:
    """``0100007F:0BB8`` → ``("127.0.0.1", 3000)`` (addresses are in host byte order words)."""
    addr_hex, _, port_hex = text.partition(":")
    raw = bytes.fromhex(addr_hex)
    # The kernel prints each 32-bit word in native (little-endian) order.
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if family == "ipv4":
        address = socket.inet_ntop(socket.AF_INET, swapped)
    else:
        address = socket.inet_ntop(socket.AF_INET6, swapped)
    return address, int(port_hex, 16)


def parse_proc_net(text: str, family: str) -> list[dict[str, Any]]:
    """The listening sockets of one ``/proc/net/tcp[6]`` table."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        try:
            address, port = _decode_address(fields[1], family)
            inode = int(fields[9])
        except (ValueError, OSError):
            continue
        out.append({"port": port, "address": address, "family": family, "inode": inode})
    return out


def _socket_owners(inodes: set[int]) -> dict[int, int]:
    """inode → pid for the given socket inodes (scans ``/proc/<pid>/fd``)."""
    found: dict[int, int] = {}
    if not inodes:
        return found
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return found
    for pid in sorted(pids):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is not None and inode not in found:
                found[inode] = pid
        if len(found) == len(wanted):
            break
    return found


def _command_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return None
    parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    return " ".join(parts) or None


def listening_ports(
    owners: bool = True, cache: dict[int, tuple[int | None, str | None]] | None = None
) -> list[dict[str, Any]]:
    """Every listening TCP socket, sorted by port; ``cache`` keeps owners across polls."""
    ports: list[dict[str, Any]] = []
    for family, path in (("ipv4", "/proc/net/tcp"), ("ipv6", "/proc/net/tcp6")):
        try:
            with open(path) as f:
                ports.extend(parse_proc_net(f.read(), family))
        except OSError:
            continue
    if owners:
        cache = {} if cache is None else cache
        missing = {p["inode"] for p in ports if p["inode"] not in cache and p["inode"]}
        if missing:
            pids = _socket_owners(missing)
            for inode in missing:
                pid = pids.get(inode)
                cache[inode] = (pid, _command_of(pid) if pid is not None else None)
        live = {p["inode"] for p in ports}
        for inode in list(cache):
            if inode not in live:
                del cache[inode]
    for p in ports:
        pid, command = cache.get(p["inode"], (None, None)) if owners and cache else (None, None)
        p["pid"], p["command"] = pid, command
    ports.sort(key=lambda p: (p["port"], p["family"], p["address"]))
    return ports


async def op_list(stream: Stream, req: dict[str, Any]) -> None:
    owners = bool(req.get("owners", True))
    ports = await run_blocking(None, listening_ports, owners)
    await stream.send_msg({"ports": ports})


def _key(p: dict[str, Any]) -> tuple[str, str, int]:
    return (p["family"], p["address"], p["port"])


async def op_watch(stream: Stream, req: dict[str, Any]) -> None:
    try:
        interval = max(float(req.get("interval", 0.5)), _MIN_INTERVAL)
    except (TypeError, ValueError):
        raise AgentError("invalid_request", "interval must be a number") from None
    cache: dict[int, tuple[int | None, str | None]] = {}
    current = {_key(p): p for p in await run_blocking(None, listening_ports, True, cache)}
    await stream.send_msg({"type": "ready", "ports": list(current.values())})
    closed = asyncio.ensure_future(stream.remote_closed_event.wait())
    try:
        while True:
            done, _ = await asyncio.wait({closed}, timeout=interval)
            if done or stream.closed:
                return
            now = {_key(p): p for p in await run_blocking(None, listening_ports, True, cache)}
            for key in sorted(current.keys() - now.keys(), key=lambda k: (k[2], k[0], k[1])):
                await stream.send_msg({"type": "closed", **current[key]})
            for key in sorted(now.keys() - current.keys(), key=lambda k: (k[2], k[0], k[1])):
                await stream.send_msg({"type": "opened", **now[key]})
            current = now
    finally:
        closed.cancel()


# -- tcp.connect -------------------------------------------------------------------
def _port_arg(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise AgentError("invalid_request", f"port must be an integer 1-65535, got {value!r}")
    return value


async def op_tcp_connect(stream: Stream, req: dict[str, Any]) -> None:
    port = _port_arg(req.get("port"))
    host = req.get("host") or "127.0.0.1"
    if not isinstance(host, str) or "\0" in host:
        raise AgentError("invalid_request", f"invalid host {host!r}")
    try:
        timeout = float(req.get("timeout", 10.0))
    except (TypeError, ValueError):
        raise AgentError("invalid_request", "timeout must be a number") from None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=RELAY_CHUNK), timeout
        )
    except ConnectionRefusedError:
        raise AgentError(
            "connection_refused", f"nothing listens on {host}:{port} in the sandbox"
        ) from None
    except TimeoutError:
        raise AgentError(
            "connection_timeout", f"connecting to {host}:{port} timed out after {timeout:g}s"
        ) from None
    except socket.gaierror as exc:
        raise AgentError("invalid_request", f"cannot resolve {host!r}: {exc}") from None
    except OSError as exc:
        raise AgentError(
            "connection_refused", f"cannot connect to {host}:{port}: {exc.strerror or exc}"
        ) from None
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await stream.send_msg({"type": "connected"})
        await relay_socket(stream, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def relay_socket(
    stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Relay a connected socket and a stream until both directions ended (or one failed)."""
    upstream = asyncio.ensure_future(_socket_to_stream(reader, stream))
    downstream = asyncio.ensure_future(_stream_to_socket(stream, writer))
    try:
        # Both directions end on their own EOF; if the host closes the stream
        # (downstream ends without EOF), the socket read is cancelled too.
        pending: set[asyncio.Future[bool]] = {upstream, downstream}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not fut.cancelled() and fut.exception() for fut in done):
                break
            if downstream in done and not downstream.result():
                break  # closed by the host, not half-closed
    finally:
        for fut in (upstream, downstream):
            fut.cancel()
        for fut in (upstream, downstream):
            with contextlib.suppress(BaseException):
                await fut


async def _socket_to_stream(reader: asyncio.StreamReader, stream: Stream) -> bool:
    """Socket bytes → DATA on channel 1 (under credit), then EOF. True when finished."""
    while True:
        await stream.wait_credit()
        try:
            chunk = await reader.read(min(RELAY_CHUNK, stream.send_credit or RELAY_CHUNK))
        except (ConnectionError, OSError):
            chunk = b""
        if not chunk:
            await stream.send_eof(Channel.STDOUT)
            return True
        await stream.send(chunk, Channel.STDOUT)


async def _stream_to_socket(stream: Stream, writer: asyncio.StreamWriter) -> bool:
    """DATA on channel 0 → socket; EOF → shutdown(SHUT_WR). False if the stream closed."""
    while True:
        event = await stream.recv()
        if event is None:
            return False
        if isinstance(event, Data) and event.channel == Channel.STDIN:
            writer.write(event.data)
            await writer.drain()
        elif isinstance(event, Eof) and event.channel == Channel.STDIN:
            if writer.can_write_eof():
                writer.write_eof()
            return True


PORT_OPS = {
    "tcp.connect": op_tcp_connect,
    "ports.list": op_list,
    "ports.watch": op_watch,
}
