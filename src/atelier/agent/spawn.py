"""Starting processes as another user with vfork-speed (no fork of the agent).

``os.posix_spawn`` (glibc: ``clone(CLONE_VM|CLONE_VFORK)``) is the cheapest
way to start a process, but it cannot switch user or directory. Linux keeps
credentials and (after ``unshare(CLONE_FS)``) the working directory *per
thread*, and a child inherits them from the thread that spawns it. So every
identity gets a small pool of spawner threads that set their own
groups/gid/uid with raw syscalls (glibc's wrappers would change every thread
of the agent) and ``chdir`` before each spawn. Under gVisor-ptrace this is
about 3x faster than ``fork`` + ``setuid`` + ``exec``.

Where that is impossible (unknown architecture, a kernel refusing the
syscalls) a fallback uses ``subprocess.Popen`` with ``user=``/``cwd=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import stat
import subprocess
import termios
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from dataclasses import dataclass

from .common import AgentError, log
from .reaper import Reaper
from .users import Identity

__all__ = ["BadCwd", "CommandNotFound", "ExecFailed", "SpawnRequest", "Spawner", "find_executable"]

_THREADS_PER_IDENTITY = 4
# (setgroups, setresuid, setresgid, unshare) syscall numbers
_SYSCALLS = {"x86_64": (116, 117, 119, 272), "aarch64": (159, 147, 149, 97)}
_CLONE_FS = 0x200


def _ignored_signals() -> list[int]:
    """Signals the agent ignores (ignored dispositions survive exec): reset in children."""
    found = {int(signal.SIGPIPE), int(signal.SIGXFSZ)}
    for sig in signal.valid_signals():
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(sig) == signal.SIG_IGN:
                found.add(int(sig))
    return sorted(found)


_SIGDEF = _ignored_signals()


class CommandNotFound(Exception):
    def __init__(self, name: str, reason: str = "command not found") -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class ExecFailed(Exception):
    def __init__(self, name: str, err: OSError) -> None:
        super().__init__(f"{name}: {err.strerror}")
        self.name = name
        self.errno = err.errno
        self.reason = err.strerror or str(err)


class BadCwd(Exception):
    pass


@dataclass(slots=True)
class SpawnRequest:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    ident: Identity
    stdin_fd: int | None = None  # None: /dev/null
    stdout_fd: int = -1
    stderr_fd: int = -1
    tty_path: str | None = None  # a pty replica opened as 0/1/2 (becomes the controlling tty)
    tty_fd: int = -1  # the same replica, open in the agent (fallback spawner)
    search_path: bool = True


def find_executable(name: str, path_var: str) -> str:
    """Resolve ``name`` like a shell would, or raise :class:`CommandNotFound`."""
    if "/" in name:
        try:
            st = os.stat(name)
        except OSError as exc:
            raise CommandNotFound(name, exc.strerror or "No such file or directory") from None
        if stat.S_ISDIR(st.st_mode):
            raise CommandNotFound(name, "Is a directory")
        return name
    if name:
        for directory in path_var.split(":"):
            candidate = os.path.join(directory or ".", name)
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
                return candidate
    raise CommandNotFound(name)


def _setup_syscalls() -> tuple[int, int, int, int] | None:
    return _SYSCALLS.get(os.uname().machine)


_NUMBERS = _setup_syscalls()
_libc = ctypes.CDLL(None, use_errno=True)


def _syscall(number: int, *args: int | ctypes.Array[ctypes.c_uint]) -> None:
    if int(_libc.syscall(number, *args)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _become(ident: Identity, switch_user: bool) -> None:
    """Thread initializer: private cwd, then (as root) this thread's credentials only.

    The thread blocks every signal: it runs as the user, so the user's processes
    could direct signals at it (tgkill); blocked, they stay pending, harmlessly.
    Children get an empty mask (``setsigmask=()``). ptrace is not a concern: the
    kernel marks the agent non-dumpable when a thread's euid changes.
    """
    assert _NUMBERS is not None
    sys_setgroups, sys_setresuid, sys_setresgid, sys_unshare = _NUMBERS
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    _syscall(sys_unshare, _CLONE_FS)
    if switch_user:
        groups = (ctypes.c_uint * max(1, len(ident.groups)))(*ident.groups)
        _syscall(sys_setgroups, len(ident.groups), groups)
        _syscall(sys_setresgid, ident.gid, ident.gid, ident.gid)
        _syscall(sys_setresuid, ident.uid, ident.uid, ident.uid)


def _resolve(req: SpawnRequest) -> str:
    if not req.argv:
        raise CommandNotFound("", "empty argv")
    if not req.search_path:
        return req.argv[0]
    return find_executable(req.argv[0], req.env.get("PATH", ""))


def _spawn_fast(req: SpawnRequest) -> int:
    """Runs in a spawner thread whose credentials are ``req.ident``'s."""
    try:
        os.chdir(req.cwd)
    except OSError as exc:
        raise BadCwd(f"cannot use cwd {req.cwd!r}: {exc.strerror}") from None
    path = _resolve(req)
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = []
    if req.tty_path is not None:
        actions.append((os.POSIX_SPAWN_OPEN, 0, req.tty_path, os.O_RDWR, 0))
        actions.append((os.POSIX_SPAWN_DUP2, 0, 1))
        actions.append((os.POSIX_SPAWN_DUP2, 0, 2))
    else:
        if req.stdin_fd is None:
            actions.append((os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, req.stdin_fd, 0))
        actions.append((os.POSIX_SPAWN_DUP2, req.stdout_fd, 1))
        actions.append((os.POSIX_SPAWN_DUP2, req.stderr_fd, 2))
    try:
        return os.posix_spawn(
            path,
            req.argv,
            req.env,
            file_actions=actions,
            setsid=True,
            setsigmask=(),
            setsigdef=_SIGDEF,
        )
    except OSError as exc:
        raise ExecFailed(req.argv[0], exc) from None


def _acquire_ctty() -> None:  # runs in the forked child (fallback only)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _spawn_fallback(req: SpawnRequest) -> int:
    """fork-based: ``subprocess.Popen`` switches user and directory in the child."""
    if not os.path.isdir(req.cwd):
        raise BadCwd(f"cannot use cwd {req.cwd!r}: not a directory")
    path = _resolve(req)
    ident = req.ident
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0 and (ident.uid, ident.gid) != (os.getuid(), os.getgid()):
        kwargs.update(user=ident.uid, group=ident.gid, extra_groups=list(ident.groups))
    if req.tty_path is not None:
        std: tuple[int, int, int] = (req.tty_fd, req.tty_fd, req.tty_fd)
        kwargs["preexec_fn"] = _acquire_ctty
    else:
        stdin = req.stdin_fd if req.stdin_fd is not None else subprocess.DEVNULL
        std = (stdin, req.stdout_fd, req.stderr_fd)
    try:
        proc = subprocess.Popen(  # type: ignore[call-overload]
            req.argv,
            executable=path,
            stdin=std[0],
            stdout=std[1],
            stderr=std[2],
            cwd=req.cwd,
            env=req.env,
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
    except OSError as exc:
        raise ExecFailed(req.argv[0], exc) from None
    pid = int(proc.pid)
    # The reaper owns this child: a returncode keeps subprocess from ever
    # calling waitpid() on it (Popen.__del__ would queue it in subprocess._active).
    proc.returncode = 0
    return pid


class Spawner:
    """Spawns processes off the event loop and registers them with the reaper."""

    def __init__(self, reaper: Reaper) -> None:
        self._reaper = reaper
        self._pools: dict[tuple[int, int, tuple[int, ...]], ThreadPoolExecutor] = {}
        self._broken: set[tuple[int, int, tuple[int, ...]]] = set()
        self._fallback = ThreadPoolExecutor(_THREADS_PER_IDENTITY, "spawn-fallback")
        # ATELIER_AGENT_SPAWN=fork forces the fallback (for tests and debugging)
        self.fast = _NUMBERS is not None and os.environ.get("ATELIER_AGENT_SPAWN") != "fork"
        if not self.fast:
            reason = "forced" if _NUMBERS is not None else f"unsupported on {os.uname().machine}"
            log.warning("per-thread credential switch %s; spawning via fork", reason)

    def _needs_switch(self, ident: Identity) -> bool:
        """Whether the spawner has to switch credentials for ``ident``."""
        if os.geteuid() == 0:
            return True
        if ident.uid != os.geteuid():
            raise AgentError(
                "permission_denied", f"the agent is not root and cannot run as {ident.name!r}"
            )
        return False

    def _pool(self, ident: Identity, switch_user: bool) -> ThreadPoolExecutor | None:
        key = (ident.uid, ident.gid, ident.groups)
        if not self.fast or key in self._broken:
            return None
        pool = self._pools.get(key)
        if pool is None:
            pool = ThreadPoolExecutor(
                _THREADS_PER_IDENTITY,
                f"spawn-{ident.uid}",
                initializer=_become,
                initargs=(ident, switch_user),
            )
            self._pools[key] = pool
        return pool

    async def _run(self, req: SpawnRequest) -> int:
        loop = asyncio.get_running_loop()
        switch_user = self._needs_switch(req.ident)
        pool = self._pool(req.ident, switch_user)
        if pool is not None:
            try:
                return await loop.run_in_executor(pool, _spawn_fast, req)
            except BrokenThreadPool as exc:
                key = (req.ident.uid, req.ident.gid, req.ident.groups)
                self._broken.add(key)
                self._pools.pop(key, None)
                log.warning("fast spawner for uid %d failed (%s); using fork", req.ident.uid, exc)
        return await loop.run_in_executor(self._fallback, _spawn_fallback, req)

    async def spawn(self, req: SpawnRequest, on_exit: Callable[[int], None]) -> int:
        """Start the process; ``on_exit(raw_status)`` is called on the loop when it ends.

        Raises :class:`BadCwd`, :class:`CommandNotFound` or :class:`ExecFailed`.
        If the caller is cancelled mid-spawn, the new process is killed.
        """
        self._reaper.spawn_started()
        fut = asyncio.ensure_future(self._run(req))
        try:
            pid = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._abandon)
            raise
        except BaseException:
            self._reaper.spawn_finished()
            raise
        self._reaper.watch(pid, on_exit)
        self._reaper.spawn_finished()
        return pid

    def _abandon(self, fut: asyncio.Future[int]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            pid = fut.result()
            self._reaper.watch(pid, lambda _status: None)
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        self._reaper.spawn_finished()

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._fallback.shutdown(wait=False, cancel_futures=True)
