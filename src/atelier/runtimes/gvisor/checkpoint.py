"""runsc checkpoint/restore of one sandbox, and the agent's socket around it.

gVisor cannot save a sandbox that holds a host-backed unix socket (runsc
``--host-uds=create``: every socket bound on a gofer path is a host socket),
and a failed ``runsc checkpoint`` leaves the sandbox *stopped*. So before a
checkpoint:

1. the agent releases its socket (``runsc kill <cid> USR1``; it closes its
   listener and connections and writes ``run/agent.released`` last), and the
   host removes ``run/agent.sock`` (gVisor refuses to unlink it inside);
2. the marker lists the unix sockets still bound inside (the agent reads
   gVisor's ``/proc/net/unix``): a process that listens on e.g.
   ``/tmp/app.sock`` makes the checkpoint impossible, so the agent re-takes
   its socket and the caller gets a Conflict naming them. (The gofer's own
   network namespace is no witness: it keeps listing the agent's socket
   after the agent closed it.)

After ``runsc restore`` (or when a capture is given up) ``runsc kill <cid>
USR2`` makes the agent listen again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from ...agent import bootstrap
from ...errors import Conflict, RuntimeFailure
from .files import SandboxFiles
from .proc import CommandResult
from .runsc import Runsc, console_open

__all__ = [
    "IMAGE_FILE",
    "blocking_sockets",
    "checkpoint",
    "first_error",
    "read_release_marker",
    "release_agent",
    "restore",
    "retake_agent",
]

IMAGE_FILE = "checkpoint.img"  # what runsc writes into --image-path
RELEASE_TIMEOUT = 15.0
CHECKPOINT_TIMEOUT = 600.0


async def release_agent(
    runsc: Runsc, files: SandboxFiles, timeout: float = RELEASE_TIMEOUT
) -> None:
    """Make the agent close every host socket; return once it did.

    Raises RuntimeFailure (after asking the agent to listen again) if it does
    not confirm within ``timeout``; Conflict if something else in the
    sandbox still holds a host-backed socket.
    """
    marker = files.run_dir / bootstrap.RELEASED_NAME
    await _wait_agent_up(files, marker, timeout)
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()  # left by an earlier, interrupted capture
    await runsc.kill(files.cid, "USR1", log=files.runsc_log)
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        released = read_release_marker(marker)
        if released is not None:
            break
        if time.monotonic() > deadline:
            await retake_agent(runsc, files)
            raise RuntimeFailure(
                f"the agent of {files.base.name} did not release its socket within {timeout:g}s"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    with contextlib.suppress(FileNotFoundError):
        files.agent_socket.unlink()  # unlink never follows a planted link
    busy = blocking_sockets(released.get("sockets"))
    if busy:
        await retake_agent(runsc, files)
        shown = ", ".join(busy[:5]) + (" ..." if len(busy) > 5 else "")
        raise Conflict(
            f"sandbox {files.base.name} has processes bound to unix sockets on its disk "
            f"({shown}); gVisor cannot save those: stop them (or use abstract or "
            "/dev/shm sockets) and try again",
            details={"sockets": busy},
        )


async def _wait_agent_up(files: SandboxFiles, marker: Path, timeout: float) -> None:
    """Wait until the agent handles SIGUSR1: it installs the handler before
    it binds its socket (or it has released it already). A USR1 sent any
    earlier would kill the agent -- and with it, as init, the sandbox."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(files.agent_socket).st_mode) or marker.exists():
                return
        if time.monotonic() > deadline:
            raise RuntimeFailure(
                f"the agent of {files.base.name} is not listening (after {timeout:g}s); "
                "it cannot be checkpointed before it is up"
            )
        await asyncio.sleep(0.02)


async def retake_agent(runsc: Runsc, files: SandboxFiles) -> None:
    """Ask the agent to listen again (its old socket file must be gone first:
    the agent cannot unlink a host-backed one under gVisor)."""
    with contextlib.suppress(FileNotFoundError):
        files.agent_socket.unlink()
    await runsc.kill(files.cid, "USR2", log=files.runsc_log)


def read_release_marker(marker: Path, limit: int = 64 * 1024) -> dict[str, Any] | None:
    """The agent's ``agent.released`` (written by the sandbox: never followed
    if a link, size-limited); None while it is missing or incomplete."""
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, limit)
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
    except ValueError:
        return None  # still being written
    return data if isinstance(data, dict) else None


def blocking_sockets(sockets: Any) -> list[str]:
    """The socket paths (as the agent listed them) a checkpoint cannot save:
    all but those on the sandbox's own tmpfs mounts (``/dev``, ``/dev/shm``)."""
    if not isinstance(sockets, list):
        return []
    return sorted(
        s for s in sockets if isinstance(s, str) and s.startswith("/") and not s.startswith("/dev/")
    )


def first_error(result: CommandResult, limit: int = 400) -> str:
    """The gist of a failed runsc command (its output can be a long Go panic)."""
    text = result.stderr.strip() or result.stdout.strip()
    for marker in ("Cannot save", "cannot save"):
        at = text.find(marker)
        if at >= 0:
            return text[at : at + limit].split("\\n")[0].split("\n")[0]
    line = next((ln for ln in text.splitlines() if ln.strip()), "(no output)")
    return line[:limit]


async def checkpoint(runsc: Runsc, files: SandboxFiles, image_dir: Path) -> CommandResult:
    """``runsc checkpoint`` into ``image_dir`` (which must not hold an image).

    On success the container is stopped (its processes gone). On failure it
    may be stopped too: the caller checks.
    """
    if (image_dir / IMAGE_FILE).exists():
        raise RuntimeFailure(f"{image_dir} already holds a checkpoint image")
    return await runsc.run(
        "checkpoint",
        f"--image-path={image_dir}",
        files.cid,
        log=files.runsc_log,
        timeout=CHECKPOINT_TIMEOUT,
        check=False,
    )


async def restore(runsc: Runsc, files: SandboxFiles, image_dir: Path) -> CommandResult:
    """``runsc restore`` of ``image_dir`` into the sandbox's container (the
    bundle must be written; no container of that id may exist). Reads the
    image only: one image can be restored by many sandboxes."""
    with console_open(files.console) as console:
        return await runsc.run(
            "restore",
            f"--image-path={image_dir}",
            f"--bundle={files.bundle}",
            "--detach",
            files.cid,
            log=files.runsc_log,
            timeout=CHECKPOINT_TIMEOUT,
            check=False,
            stdout=console,
            stderr=console,
        )
