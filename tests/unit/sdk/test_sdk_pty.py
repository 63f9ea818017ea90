"""PTY over a real local WebSocket server playing the documented protocol."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sdk_fakes import SANDBOX, TOKEN, FakeApi
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from atelier import AsyncSandbox, Sandbox
from atelier.errors import AuthenticationError, InvalidStateTransition, SandboxNotFound


class PtyServer:
    """Records what the client sent; answers with output, then the exit frame."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        self.received: list[Any] = []

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.paths.append(request.path)
        self.auth.append(request.headers.get("Authorization"))
        if "/sb-gone/" in request.path:
            body = json.dumps({"code": "sandbox_not_found", "message": "no sb-gone"}).encode()
            headers = Headers(
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return Response(404, "Not Found", headers, body)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return conn.respond(401, '{"code": "unauthenticated", "message": "bad token"}\n')
        return None

    def handler(self, conn: ServerConnection) -> None:
        if "/sb-stopped/" in conn.request.path:  # how the server refuses after accepting
            error = {"type": "error", "code": "invalid_state", "message": "sb-stopped is stopped"}
            conn.send(json.dumps(error))
            conn.close(4409, "invalid_state")
            return
        conn.send(b"$ ")
        conn.send(json.dumps({"type": "something-new"}))  # unknown control frames are ignored
        for message in conn:
            self.received.append(message)
            if message == b"exit\r":
                conn.send(b"bye\r\n")
                conn.send(json.dumps({"type": "exit", "exit_code": 3}))
                conn.close()
                return


@pytest.fixture
def pty_server() -> Iterator[tuple[PtyServer, str]]:
    state = PtyServer()
    server = serve(state.handler, "127.0.0.1", 0, process_request=state.process_request)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.socket.getsockname()[:2]
    yield state, f"http://{host}:{port}"
    server.shutdown()
    thread.join(5)


def _fake() -> FakeApi:
    fake = FakeApi()
    fake.on("GET", "/v1/sandboxes/sb-1", httpx.Response(200, json=SANDBOX))
    for other in ("sb-gone", "sb-stopped"):
        fake.on("GET", f"/v1/sandboxes/{other}", httpx.Response(200, json={**SANDBOX, "id": other}))
    return fake


def test_sync_pty_session(pty_server: tuple[PtyServer, str]) -> None:
    state, url = pty_server
    sb = Sandbox.connect("sb-1", api_url=url, transport=_fake().transport)
    with sb.pty.create(cols=100, rows=30, cmd="bash", cwd="/tmp") as p:
        assert p.recv(timeout=5) == b"$ "
        assert p.recv(timeout=0.05) == b""  # nothing more yet: timeout, not end
        p.resize(120, 40)
        p.send("exit\r")
        assert b"".join(p) == b"bye\r\n"
        assert p.recv() is None and p.ended
        assert p.exit_code == 3
    assert state.paths == ["/v1/sandboxes/sb-1/pty?cols=100&rows=30&cmd=bash&cwd=%2Ftmp"]
    assert state.auth == [f"Bearer {TOKEN}"]
    assert state.received == [json.dumps({"type": "resize", "cols": 120, "rows": 40}), b"exit\r"]


async def test_async_pty_session(pty_server: tuple[PtyServer, str]) -> None:
    state, url = pty_server
    sb = await AsyncSandbox.connect("sb-1", api_url=url, transport=_fake().transport)
    async with await sb.pty.create() as p:
        assert await p.recv(timeout=5) == b"$ "
        assert await p.recv(timeout=0.05) == b""
        await p.resize(81, 25)
        await p.send(b"exit\r")
        assert [chunk async for chunk in p] == [b"bye\r\n"]
        assert await p.wait() == 3
    assert state.paths == ["/v1/sandboxes/sb-1/pty?cols=80&rows=24"]
    assert state.received[0] == json.dumps({"type": "resize", "cols": 81, "rows": 25})


def test_pty_handshake_errors_map(pty_server: tuple[PtyServer, str]) -> None:
    _, url = pty_server
    gone = Sandbox.connect("sb-gone", api_url=url, transport=_fake().transport)
    with pytest.raises(SandboxNotFound, match="no sb-gone"):
        gone.pty.create()
    bad = Sandbox.connect("sb-1", api_url=url, token="wrong", transport=_fake().transport)
    with pytest.raises(AuthenticationError, match="bad token"):
        bad.pty.create()


def test_ws_url_follows_the_api_url_scheme_and_prefix() -> None:
    from atelier.sdk import ConnectionConfig

    cfg = ConnectionConfig.resolve("https://host:8443/atelier/", "t")
    assert cfg.ws_url("/v1/x", [("a", "b c")]) == "wss://host:8443/atelier/v1/x?a=b+c"


async def test_error_frames_raise_the_matching_error(pty_server: tuple[PtyServer, str]) -> None:
    _, url = pty_server
    sb = Sandbox.connect("sb-stopped", api_url=url, transport=_fake().transport)
    with sb.pty.create() as p, pytest.raises(InvalidStateTransition, match="is stopped"):
        p.recv(timeout=5)
    assert p.ended and p.recv() is None
    asb = await AsyncSandbox.connect("sb-stopped", api_url=url, transport=_fake().transport)
    async with await asb.pty.create() as ap:
        with pytest.raises(InvalidStateTransition):
            await ap.recv(timeout=5)
        assert ap.ended and await ap.recv() is None
