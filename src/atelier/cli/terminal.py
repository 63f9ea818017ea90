"""Bridge the user's terminal to a sandbox PTY: raw mode, SIGWINCH → resize, restore on exit."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import termios
import threading
import tty
from collections.abc import Iterator
from typing import Protocol

from atelier.errors import AtelierError

__all__ = ["PtyLike", "bridge", "terminal_size"]


class PtyLike(Protocol):
    """What :func:`bridge` needs of a :class:`atelier.sdk.PtySession`."""

    @property
    def exit_code(self) -> int | None: ...

    def send(self, data: bytes | str) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


def terminal_size(fd: int | None = None) -> tuple[int, int]:
    """(columns, rows) of the terminal on ``fd`` (fallback 80x24)."""
    try:
        size = os.get_terminal_size(fd) if fd is not None else shutil.get_terminal_size()
    except OSError:
        return 80, 24
    return size.columns, size.lines


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@contextlib.contextmanager
def _raw_mode(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def bridge(
    session: PtyLike, stdin_fd: int, stdout_fd: int, size: tuple[int, int] | None = None
) -> int:
    """Shuttle keystrokes and output until the remote program exits; its exit code.

    Output is pumped by a thread; the calling thread reads the keyboard and, on
    SIGWINCH (delivered through a self-pipe), sends the new window size. ``size``
    is the (cols, rows) the session was opened with: if the terminal was resized
    since, before our handler was installed, the new size is sent first. The
    terminal's mode and the old SIGWINCH handler are restored however this ends.
    """
    wake_r, wake_w = os.pipe()
    failure: list[BaseException] = []
    finished = threading.Event()

    def pump() -> None:
        try:
            for chunk in session:
                _write_all(stdout_fd, chunk)
        except BaseException as exc:
            failure.append(exc)
        finally:
            finished.set()
            with contextlib.suppress(OSError):
                os.write(wake_w, b"x")

    def on_winch(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(wake_w, b"w")

    previous = signal.signal(signal.SIGWINCH, on_winch)
    if size is not None and terminal_size(stdin_fd) != size:
        on_winch(signal.SIGWINCH, None)  # resized while the session was being opened
    reader = threading.Thread(target=pump, name="atelier-pty-output", daemon=True)
    try:
        with _raw_mode(stdin_fd):
            reader.start()
            while not finished.is_set():
                ready, _, _ = select.select([stdin_fd, wake_r], [], [])
                if wake_r in ready and b"w" in os.read(wake_r, 512):
                    session.resize(*terminal_size(stdin_fd))
                if stdin_fd in ready and not finished.is_set():
                    data = os.read(stdin_fd, 4096)
                    if not data:
                        break
                    session.send(data)
    except AtelierError:
        if not finished.is_set():  # a send racing the exit is not an error
            raise
    finally:
        signal.signal(signal.SIGWINCH, previous)
        session.close()
        reader.join(timeout=5)
        os.close(wake_r)
        os.close(wake_w)
    if failure:
        raise failure[0]
    code = session.exit_code
    return 0 if code is None else code
