"""Ports, port forwarding and preview URLs against a real server and a real sandbox.

One server (with ``preview_domain`` set, for host-based previews) and one
sandbox for the module. Inside the sandbox, which has no network, run
``python3 -m http.server`` and a small stdlib-only WebSocket echo server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import ServerProcess, free_port, new_server, shut_down

from atelier import Sandbox
from atelier.images.store import TemplateInfo

pytestmark = pytest.mark.integration

DOMAIN = "preview.test"
HTTP_PORT = 3000
WS_PORT = 3002

WS_ECHO = r"""
import base64, hashlib, socket, struct, sys, threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf

def send_frame(conn, opcode, payload):
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    conn.sendall(head + payload)

def handle(conn):
    try:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        head = request.split(b"\r\n\r\n", 1)[0].decode()
        headers = {}
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        path = head.split(" ")[1]
        key = headers["sec-websocket-key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        auth = "auth" if "authorization" in headers else "noauth"
        greeting = " ".join(["hello", path, headers.get("x-forwarded-prefix", "-"), auth])
        send_frame(conn, 1, greeting.encode())
        while True:
            b1, b2 = read_exact(conn, 2)
            opcode, n = b1 & 0x0F, b2 & 0x7F
            if n == 126:
                n = struct.unpack("!H", read_exact(conn, 2))[0]
            elif n == 127:
                n = struct.unpack("!Q", read_exact(conn, 8))[0]
            mask = read_exact(conn, 4) if b2 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(read_exact(conn, n)))
            if opcode == 8:
                send_frame(conn, 8, data[:2])
                return
            if opcode == 9:
                send_frame(conn, 10, data)
            elif opcode in (1, 2):
                send_frame(conn, opcode, data)
    except (EOFError, OSError):
        pass
    finally:
        conn.close()

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(16)
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""


@pytest.fixture(scope="module")
def pserver(base_template: TemplateInfo) -> Iterator[ServerProcess]:
    srv = new_server(base_template, ATELIER_PREVIEW_DOMAIN=DOMAIN)
    srv.start()
    try:
        yield srv
        log = srv.log_file.read_text(errors="replace")
        assert "Traceback" not in log and "exception was never retrieved" not in log, log[-5000:]
    finally:
        shut_down(srv)


def wait_for(predicate, timeout: float = 60, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def psb(pserver: ServerProcess) -> Iterator[Sandbox]:
    sb = Sandbox.create(api_url=pserver.url, token=pserver.token, timeout=1800)
    try:
        sb.files.write("/home/user/ws_echo.py", WS_ECHO)
        sb.commands.run(
            "mkdir -p /home/user/www && cd /home/user/www && echo hello-preview > index.html"
            " && head -c 20971520 /dev/urandom > big.bin"
        )
        sb.commands.run(
            f"cd /home/user/www && exec python3 -m http.server {HTTP_PORT} --bind 127.0.0.1",
            background=True,
        )
        sb.commands.run(f"exec python3 /home/user/ws_echo.py {WS_PORT}", background=True)
        wait_for(
            lambda: {HTTP_PORT, WS_PORT} <= {p.port for p in sb.ports.list()},
            what="the servers to listen",
        )
        yield sb
    finally:
        sb.kill()
        sb.close()


def preview_path(srv: ServerProcess, sb: Sandbox, port: int, path: str = "") -> str:
    return f"{srv.url}/preview/{sb.id}/{port}/{path}"


def test_ports_list_shows_listeners_live(pserver: ServerProcess, psb: Sandbox) -> None:
    ports = {p.port: p for p in psb.ports.list()}
    http_port = ports[HTTP_PORT]
    assert http_port.addresses == ["127.0.0.1"]
    assert http_port.pid is not None and "http.server" in (http_port.command or "")
    assert http_port.visibility == "private"
    assert http_port.path_url == preview_path(pserver, psb, HTTP_PORT)
    assert http_port.url == f"http://{HTTP_PORT}-{psb.id}.{DOMAIN}/"

    with psb.ports.watch() as events:
        first = next(events)
        assert first.type == "ready" and HTTP_PORT in first.ports and 3005 not in first.ports
        proc = psb.commands.run("exec python3 -m http.server 3005", background=True)
        opened = next(e for e in events if e.port == 3005)
        assert opened.type == "opened"
        assert 3005 in [p.port for p in psb.ports.list()]
        proc.kill()
        closed = next(e for e in events if e.port == 3005)
        assert closed.type == "closed"
    assert 3005 not in [p.port for p in psb.ports.list()]


def test_ports_api_errors(pserver: ServerProcess, psb: Sandbox) -> None:
    with pserver.client() as http:
        assert (
            http.put(f"/v1/sandboxes/{psb.id}/ports/0", json={"visibility": "public"}).status_code
            == 422
        )
        r = http.put(f"/v1/sandboxes/{psb.id}/ports/3000", json={"visibility": "open"})
        assert r.status_code == 422
        assert http.get("/v1/sandboxes/sb-nope/ports").status_code == 404
    assert httpx.get(f"{pserver.url}/v1/sandboxes/{psb.id}/ports").status_code == 401


def test_port_forward_cli(pserver: ServerProcess, psb: Sandbox) -> None:
    local = free_port()
    local_ws = free_port()
    env = {**os.environ, "ATELIER_URL": pserver.url, "ATELIER_TOKEN": pserver.token}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("atelier")),
            "port-forward",
            psb.id,
            f"{local}:{HTTP_PORT}",
            f"{local_ws}:{WS_PORT}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert f"127.0.0.1:{local} -> {psb.id}:{HTTP_PORT}" in "".join(lines), lines
        base = f"http://127.0.0.1:{local}"
        assert httpx.get(f"{base}/index.html", timeout=60).text == "hello-preview\n"

        def get(i: int) -> str:
            return httpx.get(f"{base}/index.html?i={i}", timeout=120).text

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(get, range(16))) == ["hello-preview\n"] * 16

        expected = psb.commands.run("sha256sum /home/user/www/big.bin").stdout.split()[0]
        digest = hashlib.sha256()
        size = 0
        with httpx.stream("GET", f"{base}/big.bin", timeout=300) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                digest.update(chunk)
                size += len(chunk)
        assert size == 20 * 1024 * 1024
        assert digest.hexdigest() == expected

        # Any TCP protocol: a raw WebSocket conversation through the second mapping.
        async def ws_roundtrip() -> str:
            from websockets.asyncio.client import connect

            async with connect(f"ws://127.0.0.1:{local_ws}/raw") as ws:
                hello = await ws.recv()
                await ws.send("ping")
                assert await ws.recv() == "ping"
                return str(hello)

        assert asyncio.run(ws_roundtrip()) == "hello /raw - noauth"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert proc.returncode == 0


def test_port_forward_to_closed_port_reports_refused(pserver: ServerProcess, psb: Sandbox) -> None:
    async def attempt() -> None:
        from atelier.errors import AtelierError
        from atelier.sdk.ports import open_tunnel

        config = psb.ports._config
        with pytest.raises(AtelierError) as info:
            await open_tunnel(config, psb.id, 3999)
        assert info.value.code == "connection_refused"

    asyncio.run(attempt())


def test_preview_private_token_link_and_public(pserver: ServerProcess, psb: Sandbox) -> None:
    url = preview_path(pserver, psb, HTTP_PORT, "index.html")
    auth = {"Authorization": f"Bearer {pserver.token}"}

    denied = httpx.get(url)
    assert denied.status_code == 401
    assert denied.json()["code"] == "unauthenticated"
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401

    ok = httpx.get(url, headers=auth)
    assert ok.status_code == 200 and ok.text == "hello-preview\n"

    # ?token= once: redirected to the clean URL with a cookie scoped to this preview
    with httpx.Client(follow_redirects=False) as client:
        first = client.get(url, params={"token": pserver.token})
        assert first.status_code == 303
        assert first.headers["location"] == f"/preview/{psb.id}/{HTTP_PORT}/index.html"
        cookie = first.headers["set-cookie"]
        assert f"Path=/preview/{psb.id}/{HTTP_PORT}/" in cookie and "HttpOnly" in cookie
        again = client.get(url)
        assert again.status_code == 200 and again.text == "hello-preview\n"
        assert client.get(preview_path(pserver, psb, WS_PORT)).status_code == 401  # other port

    # a redirect without the trailing slash
    bare = httpx.get(f"{pserver.url}/preview/{psb.id}/{HTTP_PORT}", headers=auth)
    assert bare.status_code == 308 and bare.headers["location"].endswith(f"/{HTTP_PORT}/")

    # signed links: work until they expire, tampering is refused
    link = psb.ports.link(HTTP_PORT, ttl=4)
    assert link.path_url.startswith(preview_path(pserver, psb, HTTP_PORT))
    via_link = httpx.get(link.path_url.replace("/?", "/index.html?"), follow_redirects=True)
    assert via_link.status_code == 200 and via_link.text == "hello-preview\n"
    tampered = link.path_url[:-3] + ("xyz" if not link.path_url.endswith("xyz") else "abc")
    assert httpx.get(tampered, follow_redirects=True).status_code == 401
    other_port = link.path_url.replace(f"/{HTTP_PORT}/", f"/{WS_PORT}/")
    assert httpx.get(other_port, follow_redirects=True).status_code == 401
    wait_for(lambda: time.time() > link.expires_at.timestamp() + 0.5, 30, "the link to expire")
    expired = httpx.get(link.path_url, follow_redirects=True)
    assert expired.status_code == 401

    # public: no auth at all; back to private: 401 again
    assert psb.ports.expose(HTTP_PORT, "public") == f"http://{HTTP_PORT}-{psb.id}.{DOMAIN}/"
    try:
        assert [p.visibility for p in psb.ports.list() if p.port == HTTP_PORT] == ["public"]
        public = httpx.get(url)
        assert public.status_code == 200 and public.text == "hello-preview\n"
    finally:
        psb.ports.expose(HTTP_PORT, "private")
    wait_for(lambda: httpx.get(url).status_code == 401, 10, "private again")
    assert f"atelier.port.{HTTP_PORT}" not in psb.get_info().labels


def test_preview_streams_large_bodies_and_forwards_headers(
    pserver: ServerProcess, psb: Sandbox
) -> None:
    auth = {"Authorization": f"Bearer {pserver.token}"}
    expected = psb.commands.run("sha256sum /home/user/www/big.bin").stdout.split()[0]
    digest = hashlib.sha256()
    with httpx.stream(
        "GET", preview_path(pserver, psb, HTTP_PORT, "big.bin"), headers=auth, timeout=300
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(20 * 1024 * 1024)
        for chunk in response.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == expected
    # keep-alive to the client: several requests on one connection
    with httpx.Client(headers=auth, timeout=60) as client:
        for _ in range(5):
            assert (
                client.get(preview_path(pserver, psb, HTTP_PORT, "index.html")).status_code == 200
            )


def test_preview_websocket_echo(pserver: ServerProcess, psb: Sandbox) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    ws_url = f"ws://127.0.0.1:{pserver.port}/preview/{psb.id}/{WS_PORT}/chat?room=1"

    async def run() -> None:
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url):
                pass
        assert info.value.response.status_code == 401
        headers = {"Authorization": f"Bearer {pserver.token}"}
        async with connect(ws_url, additional_headers=headers, max_size=None) as ws:
            # the in-sandbox server sees X-Forwarded-Prefix and never the Atelier token
            assert await ws.recv() == f"hello /chat?room=1 /preview/{psb.id}/{WS_PORT} noauth"
            await ws.send("text message")
            assert await ws.recv() == "text message"
            blob = os.urandom(1024 * 1024)
            await ws.send(blob)
            assert await ws.recv() == blob
            await ws.ping()
        # host-based, with ?token= (browsers cannot set headers)
        host_url = f"ws://{WS_PORT}-{psb.id}.{DOMAIN}:{pserver.port}/h?token={pserver.token}"
        async with connect(host_url, host="127.0.0.1", port=pserver.port) as ws:
            assert await ws.recv() == "hello /h - noauth"
            await ws.send("via host")
            assert await ws.recv() == "via host"

    asyncio.run(run())


def test_host_based_preview(pserver: ServerProcess, psb: Sandbox) -> None:
    host = {"Host": f"{HTTP_PORT}-{psb.id}.{DOMAIN}:{pserver.port}"}
    assert httpx.get(f"{pserver.url}/index.html", headers=host).status_code == 401
    ok = httpx.get(
        f"{pserver.url}/index.html",
        headers={**host, "Authorization": f"Bearer {pserver.token}"},
    )
    assert ok.status_code == 200 and ok.text == "hello-preview\n"
    link = psb.ports.link(HTTP_PORT, ttl=60)
    assert link.host_url is not None and link.host_url.startswith(
        f"http://{HTTP_PORT}-{psb.id}.{DOMAIN}/?atelier_link="
    )
    query = link.host_url.split("?", 1)[1]
    with httpx.Client(headers=host) as client:
        first = client.get(f"{pserver.url}/?{query}")
        assert first.status_code == 303 and first.headers["location"] == "/"
        assert "Path=/;" in first.headers["set-cookie"]
        listing = client.get(f"{pserver.url}/")
        assert listing.status_code == 200 and listing.text == "hello-preview\n"
    # the API itself still answers on the server's own host
    assert httpx.get(f"{pserver.url}/healthz").json()["status"] == "ok"
    # unknown sandbox in a preview host → 404 JSON
    missing = httpx.get(f"{pserver.url}/", headers={"Host": f"3000-sb-nope.{DOMAIN}"})
    assert missing.status_code == 404 and missing.json()["code"] == "sandbox_not_found"


def test_refused_port_in_preview_is_502(pserver: ServerProcess, psb: Sandbox) -> None:
    r = httpx.get(
        preview_path(pserver, psb, 3999), headers={"Authorization": f"Bearer {pserver.token}"}
    )
    assert r.status_code == 502
    assert r.json()["code"] == "connection_refused"
    assert json.loads(r.text)["message"]
