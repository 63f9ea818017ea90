"""The raw-mode PTY bridge, on a real pseudo-terminal pair with a scripted session."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios
import threading
import time
from collections.abc import Iterator

import pytest

from atelier.cli.terminal import bridge, terminal_size
from atelier.errors import ApiConnectionError


class ScriptedSession:
    """Prints a prompt, waits for ``exit\\r``, says bye and exits 5."""

    def __init__(self, fail: bool = False) -> None:
        self.sent = bytearray()
        self.resizes: list[tuple[int, int]] = []
        self.got_exit = threading.Event()
        self.started = threading.Event()
        self.closed = False
        self.fail = fail
        self._exit_code: int | None = None

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    def send(self, data: bytes | str) -> None:
        self.sent += data if isinstance(data, bytes) else data.encode()
        if b"exit\r" in self.sent:
            self.got_exit.set()

    def resize(self, cols: int, rows: int) -> None:
        self.resizes.append((cols, rows))

    def __iter__(self) -> Iterator[bytes]:
        self.started.set()
        yield b"$ "
        if self.fail:
            raise ApiConnectionError("terminal connection lost")
        assert self.got_exit.wait(10)
        yield b"bye\r\n"
        self._exit_code = 5

    def close(self) -> None:
        self.closed = True


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_bridge_forwards_keys_resizes_and_restores_the_terminal() -> None:
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    _set_size(slave, 100, 30)
    assert terminal_size(slave) == (100, 30)
    before = termios.tcgetattr(slave)
    session = ScriptedSession()

    def user() -> None:
        assert session.started.wait(10)
        _set_size(slave, 132, 43)
        os.kill(os.getpid(), signal.SIGWINCH)
        deadline = time.monotonic() + 10
        while not session.resizes and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(master, b"exit\r")

    helper = threading.Thread(target=user)
    helper.start()
    previous = signal.getsignal(signal.SIGWINCH)
    try:
        assert bridge(session, slave, out_w) == 5
    finally:
        helper.join(10)
    os.close(out_w)
    with os.fdopen(out_r, "rb") as out:
        assert out.read() == b"$ bye\r\n"
    assert bytes(session.sent) == b"exit\r"  # raw mode: no echo, no CR translation
    assert session.resizes == [(132, 43)]
    assert session.closed
    assert termios.tcgetattr(slave) == before
    assert signal.getsignal(signal.SIGWINCH) == previous
    os.close(master)
    os.close(slave)


def test_bridge_sends_a_resize_that_happened_while_the_session_opened() -> None:
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    _set_size(slave, 120, 40)
    for opened_with, expected in (((80, 24), [(120, 40)]), ((120, 40), [])):
        session = ScriptedSession()

        def user(session: ScriptedSession = session) -> None:
            assert session.started.wait(10)  # raw mode is on: type without CR translation
            os.write(master, b"exit\r")

        helper = threading.Thread(target=user)
        helper.start()
        assert bridge(session, slave, out_w, size=opened_with) == 5
        helper.join(10)
        assert session.resizes == expected
    for fd in (master, slave, out_r, out_w):
        os.close(fd)


def test_bridge_reports_a_lost_connection_and_still_restores() -> None:
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    before = termios.tcgetattr(slave)
    with pytest.raises(ApiConnectionError):
        bridge(ScriptedSession(fail=True), slave, out_w)
    assert termios.tcgetattr(slave) == before
    for fd in (master, slave, out_r, out_w):
        os.close(fd)
