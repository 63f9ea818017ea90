"""The runtime's own line to the guest: the ``org.atelier.control`` port.

The agent port belongs to the server's ``AgentClient`` (one host connection
at a time), so the runtime talks to the guest over a second virtio-serial
port, served by :class:`atelier.agent.serial_channel.ControlChannel`:
``sync`` before a stop (the page cache reaches the disk), ``time <seconds>``
after a restore or resume (a restored clock is as old as its snapshot),
``agent-idle`` after a restore (see snapshots.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from ...errors import RuntimeFailure

__all__ = ["control", "set_clock", "sync_disks", "time_command"]


async def control(
    socket: Path, *commands: str | Callable[[], str], timeout: float = 30.0
) -> list[str]:
    """Send each command (one line; a callable is called just before sending)
    and return the replies; RuntimeFailure on any error."""
    replies: list[str] = []
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(socket))
            for item in commands:
                command = item() if callable(item) else item
                writer.write(command.encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
                if not line:
                    raise RuntimeFailure(f"the guest closed its control port during {command!r}")
                reply = line.decode(errors="replace").strip()
                if reply != "ok":
                    raise RuntimeFailure(f"guest control {command!r}: {reply}")
                replies.append(reply)
    except (OSError, TimeoutError) as exc:
        raise RuntimeFailure(f"guest control port {socket}: {exc!r}") from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return replies


async def sync_disks(socket: Path, timeout: float = 30.0) -> None:
    await control(socket, "sync", timeout=timeout)


def time_command() -> str:
    return f"time {time.time():.6f}"


async def set_clock(socket: Path, timeout: float = 30.0) -> None:
    await control(socket, time_command(), timeout=timeout)
