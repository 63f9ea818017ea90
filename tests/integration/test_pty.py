"""Interactive terminals through the SDK (WebSocket) against a real sandbox."""

from __future__ import annotations

import time

import pytest

from atelier import Sandbox

pytestmark = pytest.mark.integration


def read_until(p, needle: bytes, deadline_s: float = 30) -> bytes:  # type: ignore[no-untyped-def]
    seen = b""
    deadline = time.monotonic() + deadline_s
    while needle not in seen and time.monotonic() < deadline:
        chunk = p.recv(timeout=1)
        if chunk is None:
            break
        seen += chunk
    return seen


def test_pty_echo_resize_and_exit(sb: Sandbox) -> None:
    with sb.pty.create(cols=80, rows=24) as p:
        p.send(b"echo $((6*7))\r")
        assert b"42" in read_until(p, b"42")
        p.send(b"stty size\r")
        assert b"24 80" in read_until(p, b"24 80")
        p.resize(cols=120, rows=40)
        p.send(b"stty size\r")
        assert b"40 120" in read_until(p, b"40 120")
        p.send(b"tty; exit 5\r")
        out = read_until(p, b"\x00never")  # until the session ends
        assert b"/dev/pts/" in out
    assert p.exit_code == 5


def test_pty_runs_a_given_command(sb: Sandbox) -> None:
    with sb.pty.create(cmd="python3 -c 'import sys; print(sys.stdin.isatty())'") as p:
        out = read_until(p, b"True")
    assert b"True" in out
