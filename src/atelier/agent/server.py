"""The agent's unix-socket server and request dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from . import files, ports, terminal, watch
from .common import AgentError, from_oserror, log
from .processes import ProcessTable
from .protocol import PROTOCOL_VERSION, Connection, ConnectionLost, Stream, StreamClosed
from .reaper import Reaper
from .spawn import Spawner

__all__ = ["READ_LIMIT", "AgentServer"]

READ_LIMIT = 1024 * 1024  # StreamReader buffer: fewer pauses for 64 KiB frames
Op = Callable[[Stream, dict[str, Any]], Awaitable[None]]


class AgentServer:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.reaper = Reaper()
        self.spawner = Spawner(self.reaper)
        self.table = ProcessTable(self.spawner)
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._stopping = asyncio.Event()
        self.ops: dict[str, Op] = {
            "ping": self.op_ping,
            "exec": self.table.op_exec,
            "process.list": self.table.op_list,
            "process.attach": self.table.op_attach,
            "process.stdin": self.table.op_stdin,
            "process.signal": self.table.op_signal,
            "pty": self.op_pty,
            "fs.watch": watch.op_watch,
            **files.FILE_OPS,
            **ports.PORT_OPS,
        }

    async def op_ping(self, stream: Stream, req: dict[str, Any]) -> None:
        await stream.send_msg({"pong": True, "protocol": PROTOCOL_VERSION, "pid": os.getpid()})

    async def op_pty(self, stream: Stream, req: dict[str, Any]) -> None:
        await terminal.op_pty(self.spawner, stream, req)

    async def handle(self, stream: Stream, request: dict[str, Any]) -> None:
        op = request.get("op")
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            await stream.send_error("invalid_request", f"unknown op {op!r}")
            return
        try:
            await handler(stream, request)
        except AgentError as exc:
            await stream.send_error(exc.code, exc.message)
        except (ConnectionLost, StreamClosed):
            raise
        except OSError as exc:
            err = from_oserror(exc)
            log.warning("op %s failed: %s", op, exc)
            await stream.send_error(err.code, err.message)
        except Exception:
            log.exception("op %s crashed", op)
            raise

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, self.handle)
        self.connections.add(conn)
        log.info("connection opened (%d open)", len(self.connections))
        try:
            await conn.serve()
        finally:
            self.connections.discard(conn)
            log.info("connection closed (%d open)", len(self.connections))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.reaper.start(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        directory = os.path.dirname(self.socket_path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        # The umask makes the socket 0600 from birth; no chmod afterwards: under
        # gVisor a host-backed socket file refuses chmod/stat (EPERM).
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_client, self.socket_path, limit=READ_LIMIT
            )
        finally:
            os.umask(old_umask)
        log.info("agent ready pid=%d socket=%s", os.getpid(), self.socket_path)

    def stop(self) -> None:
        log.info("stopping")
        self._stopping.set()

    async def run(self) -> None:
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            await conn.aclose()
        self.table.shutdown()
        self.spawner.shutdown()
        self.reaper.stop()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
