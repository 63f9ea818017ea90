"""The QMP client against a tiny QMP server on a unix socket (greeting,
capabilities, ids, errors, events, descriptor passing)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atelier.runtimes.qemu.qmp import QmpClient, QmpClosed, QmpError


class FakeQmp:
    """One-client QMP server in a thread; records commands and received descriptors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.commands: list[dict[str, Any]] = []
        self.fd_contents: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, conn: socket.socket, obj: dict[str, Any]) -> None:
        conn.sendall(json.dumps(obj).encode() + b"\r\n")

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            self._send(conn, {"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}})
            buffer = b""
            negotiated = False
            while True:
                data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
                for fd in fds:
                    os.lseek(fd, 0, 0)
                    self.fd_contents.append(os.read(fd, 100))
                    os.close(fd)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    self.commands.append(request)
                    ident = request.get("id")
                    name = request["execute"]
                    if not negotiated and name != "qmp_capabilities":
                        self._send(conn, {"error": {"class": "CommandNotFound", "desc": "caps"}})
                        continue
                    if name == "qmp_capabilities":
                        negotiated = True
                        self._send(conn, {"return": {}, "id": ident})
                    elif name == "query-status":
                        # an event may arrive between a command and its reply
                        self._send(conn, {"event": "STOP", "timestamp": {"seconds": 1}})
                        self._send(conn, {"return": {"status": "paused"}, "id": ident})
                    elif name == "boom":
                        self._send(
                            conn, {"error": {"class": "GenericError", "desc": "no"}, "id": ident}
                        )
                    elif name == "quit":
                        self._send(conn, {"return": {}, "id": ident})
                        self._send(conn, {"event": "SHUTDOWN", "data": {"guest": False}})
                        return
                    else:
                        self._send(conn, {"return": request.get("arguments", {}), "id": ident})

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeQmp]:
    srv = FakeQmp(tmp_path / "qmp.sock")
    yield srv
    srv.close()


async def test_handshake_and_commands(server: FakeQmp) -> None:
    async with await QmpClient.connect(server.path) as qmp:
        assert qmp.greeting["version"]["qemu"]["major"] == 7
        assert await qmp.execute("query-status") == {"status": "paused"}
        assert await qmp.execute("echo", {"a": 1}) == {"a": 1}
        with pytest.raises(QmpError) as err:
            await qmp.execute("boom")
        assert err.value.error_class == "GenericError" and err.value.desc == "no"
        event = await qmp.wait_event("STOP", timeout=5)
        assert event["timestamp"]["seconds"] == 1
    names = [c["execute"] for c in server.commands]
    assert names == ["qmp_capabilities", "query-status", "echo", "boom"]
    ids = [c["id"] for c in server.commands]
    assert len(set(ids)) == len(ids)


async def test_concurrent_commands_match_by_id(server: FakeQmp) -> None:
    async with await QmpClient.connect(server.path) as qmp:
        results = await asyncio.gather(*(qmp.execute("echo", {"n": n}) for n in range(20)))
        assert [r["n"] for r in results] == list(range(20))


async def test_passes_descriptors(server: FakeQmp, tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.write_bytes(b"device state")
    fd = os.open(target, os.O_RDONLY)
    try:
        async with await QmpClient.connect(server.path) as qmp:
            await qmp.execute("getfd", {"fdname": "snapshot"}, fds=[fd])
            await qmp.execute("echo")
    finally:
        os.close(fd)
    assert server.fd_contents == [b"device state"]
    getfd = next(c for c in server.commands if c["execute"] == "getfd")
    assert getfd["arguments"] == {"fdname": "snapshot"}


async def test_events_with_match_and_close(server: FakeQmp) -> None:
    qmp = await QmpClient.connect(server.path)
    try:
        await qmp.execute("quit")
        event = await qmp.wait_event(
            "SHUTDOWN", timeout=5, match=lambda ev: ev["data"]["guest"] is False
        )
        assert event["event"] == "SHUTDOWN"
        with pytest.raises(QmpClosed):
            await qmp.wait_event("NEVER", timeout=5)  # the server went away
        with pytest.raises(QmpClosed):
            await qmp.execute("query-status")
        assert qmp.closed
    finally:
        await qmp.close()


async def test_wait_event_times_out(server: FakeQmp) -> None:
    async with await QmpClient.connect(server.path) as qmp:
        with pytest.raises(TimeoutError):
            await qmp.wait_event("RESUME", timeout=0.05)


async def test_not_qmp(tmp_path: Path) -> None:
    path = tmp_path / "other.sock"

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"hello": 1}\n')
        await writer.drain()
        writer.close()

    srv = await asyncio.start_unix_server(greet, str(path))
    try:
        with pytest.raises(QmpClosed):
            await QmpClient.connect(path, timeout=5)
    finally:
        srv.close()
    with pytest.raises(OSError):
        await QmpClient.connect(tmp_path / "missing.sock", timeout=5)
