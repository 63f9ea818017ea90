"""Starting, finding and killing QEMU processes; running host tools.

QEMU is started detached: its own session (``setsid``), stdin from
``/dev/null``, stdout/stderr appended to ``qemu.log``, so a server restart
leaves it running. A daemon thread of the starting process waits for it
(reaps it) while that process lives; after a restart it is re-parented and
reaped by init. A pid from ``qemu.pid`` is trusted only while
``/proc/<pid>/cmdline`` still names that sandbox's QMP socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ...errors import RuntimeFailure

__all__ = [
    "Launched",
    "find_processes",
    "is_alive",
    "kill_and_wait",
    "launch",
    "read_pid",
    "run_tool",
    "wait_gone",
]

# Join the cgroups (each ``cgroup.procs`` given as an argument), then exec QEMU.
_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


class Launched:
    """A started process; ``exited`` is set once the reaper thread collected it.

    (Its ``/proc`` entry cannot tell during the cgroup wrapper's ``exec``: the
    command line is briefly empty.)
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exited = threading.Event()
        self.returncode: int | None = None


def launch(
    argv: Sequence[str],
    *,
    log: Path,
    pass_fds: Sequence[int] = (),
    cgroup_procs: Sequence[Path] = (),
) -> Launched:
    """Start QEMU detached (blocking: call via ``to_thread``)."""
    full = list(argv)
    if cgroup_procs:
        full = ["/bin/sh", "-c", _JOIN, "sh", *map(str, cgroup_procs), "--", *full]
    with log.open("ab") as out:
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    launched = Launched(proc.pid)
    threading.Thread(
        target=_wait, args=(proc, log, launched), name=f"reap-{proc.pid}", daemon=True
    ).start()
    return launched


def _wait(proc: subprocess.Popen[bytes], log: Path, launched: Launched) -> None:
    """Reap QEMU and note how it ended in its log (a signal leaves no message)."""
    code = proc.wait()
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
    with contextlib.suppress(OSError, ValueError), log.open("ab") as out:
        out.write(f"atelier: QEMU pid {proc.pid} ended with {how}\n".encode())
    launched.returncode = code
    launched.exited.set()


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :][:1]


def is_alive(pid: int, marker: str) -> bool:
    """``pid`` runs (not a zombie) and its command line contains ``marker``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if marker.encode() not in cmdline:
        return False
    state = _stat_state(pid)
    if state == "Z":
        _reap(pid)
        return False
    return state is not None


def _reap(pid: int) -> None:
    # a zombie we (or our subreaper parent) adopted: collect it if it is ours
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def find_processes(marker: str, proc: Path = Path("/proc")) -> list[int]:
    """Live processes whose command line has an argument containing ``marker``."""
    found = []
    needle = marker.encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(needle in arg for arg in args) and _stat_state(int(entry.name)) not in (None, "Z"):
            found.append(int(entry.name))
    return found


async def wait_gone(pid: int, marker: str, timeout: float) -> bool:
    """Wait until ``pid`` is gone; True if it is."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while is_alive(pid, marker):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    _reap(pid)
    return True


async def kill_and_wait(pid: int, marker: str, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` (if it is still that process) and wait until it is gone."""
    if not is_alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not await wait_gone(pid, marker, timeout):
        raise RuntimeFailure(f"QEMU process {pid} did not die after SIGKILL")


async def run_tool(argv: Sequence[str], *, timeout: float = 120.0) -> str:
    """Run a host tool (qemu-img, cp); return its stdout; RuntimeFailure if it fails."""
    args = [str(a) for a in argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise RuntimeFailure(f"cannot run {args[0]}: {exc.strerror or exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise RuntimeFailure(f"{' '.join(args[:3])} timed out after {timeout:g}s") from exc
        raise
    if proc.returncode != 0:
        said = (err or out).decode(errors="replace").strip()[-2000:]
        raise RuntimeFailure(f"{' '.join(args[:3])} failed (exit {proc.returncode}): {said}")
    return out.decode(errors="replace")
