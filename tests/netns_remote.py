"""A stand-in for "the outside" in network tests (a unique module name: import as
``netns_remote``): a network namespace ``atltest-<tag>`` joined to the root
namespace by a veth on a test-only subnet, with a TCP server that greets
every connection with a token. Nothing here sends traffic anywhere else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ci_support import skip_unless_ci

__all__ = [
    "PORT",
    "SERVER_SCRIPT",
    "TOKEN",
    "HostServer",
    "Remote",
    "need_host",
    "new_net_ids",
    "remote_namespace",
]

PORT = 8765
TOKEN = "remote-ok"

SERVER_SCRIPT = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[3].encode() + b"\\n")
    c.close()
"""


def need_host() -> None:
    if os.geteuid() != 0:
        skip_unless_ci("sandbox networking needs root")
    for tool in ("ip", "nft", "unshare", "nsenter", "runsc"):
        if shutil.which(tool) is None:
            skip_unless_ci(f"{tool} is not installed")


@dataclass
class Remote:
    """A network namespace standing for "the outside", with a TCP server."""

    name: str
    host_if: str
    host_ip: str
    ip: str
    subnet: str
    server: subprocess.Popen[bytes] | None = None


def new_net_ids() -> dict[str, str]:
    """A random test-only address pool, remote subnet and nft table name."""
    rand = random.Random(uuid.uuid4().int)
    a, b = rand.randrange(100, 200), rand.randrange(0, 250)
    tag = uuid.uuid4().hex[:6]
    return {
        "pool": f"10.{a}.{b}.0/24",
        "remote": f"10.{a + 1}.{b}.0/24",
        "table": f"atltest{tag}",
        "tag": tag,
    }


@contextmanager
def remote_namespace(net_ids: dict[str, str]) -> Iterator[Remote]:
    """The remote namespace with its server; everything removed on exit (and
    IPv4 forwarding, which sandbox networking turns on, put back)."""
    need_host()
    net = ipaddress.IPv4Network(net_ids["remote"])
    r = Remote(
        name=f"atltest-{net_ids['tag']}",
        host_if=f"atr{net_ids['tag']}",
        host_ip=str(net.network_address + 1),
        ip=str(net.network_address + 2),
        subnet=str(net),
    )

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    # sandbox networking turns IPv4 forwarding on (host-wide); put it back after
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    was_forwarding = forwarding.read_text()
    try:
        ip("netns", "add", r.name)
        ip("link", "add", r.host_if, "type", "veth", "peer", "name", "eth0", "netns", r.name)
        ip("addr", "add", f"{r.host_ip}/24", "dev", r.host_if)
        ip("link", "set", r.host_if, "up")
        ip("-n", r.name, "addr", "add", f"{r.ip}/24", "dev", "eth0")
        ip("-n", r.name, "link", "set", "eth0", "up")
        ip("-n", r.name, "link", "set", "lo", "up")
        r.server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                r.name,
                sys.executable,
                "-c",
                SERVER_SCRIPT,
                r.ip,
                str(PORT),
                TOKEN,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(r.name, PORT)
        yield r
    finally:
        if r.server is not None:
            r.server.kill()
            r.server.wait()
        subprocess.run(["ip", "link", "del", r.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", r.name], capture_output=True)
        forwarding.write_text(was_forwarding)


def _wait_listening(ns: str, port: int) -> None:
    for _ in range(100):
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"],
            capture_output=True,
            text=True,
        ).stdout
        if out.strip():
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"server in {ns} did not listen on {port}")


class HostServer:
    """A TCP server on this host (loopback or a sandbox's gateway address)."""

    def __init__(self, addr: str, token: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.token = token
        self.hits = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            with conn:
                conn.sendall(self.token.encode() + b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
