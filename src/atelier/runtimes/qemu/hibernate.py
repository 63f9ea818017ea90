"""Hibernate and wake of a QEMU sandbox.

Hibernate: stop the VM, migrate its device state into
``<id>/hibernate.tmp/state`` and quit QEMU; the guest RAM stays where it
already is, in the sandbox's ``memory`` file (``share=on``, so the stream
leaves it out with ``x-ignore-shared``). A VM restored from a snapshot runs
on a private copy-on-write map of the snapshot's memory: its RAM goes into
the stream instead. ``hibernate.json`` (boot files, whether RAM is in the
stream) is written, then the dir renamed to ``hibernate/`` (= complete).

Wake: QEMU with ``-incoming defer`` over the same disks, RAM file
``memory`` (``share=on``), the state loaded, ``cont``; then, as after a
snapshot restore, the agent drops the host connection it had (launch.py).
The image is removed once the VM runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from ...errors import InvalidStateTransition, RuntimeFailure
from .files import SandboxFiles, read_json, write_json
from .qmp import QmpClient, QmpClosed, QmpError
from .snapshots import wait_migration

__all__ = ["META", "image_dir", "is_hibernated", "save", "state_path"]

META = "hibernate.json"
_BOOT_KEYS = ("accel", "cpu", "qemu_version", "kernel", "initramfs", "append", "kernel_version")


def _ignore_shared(on: bool) -> dict[str, Any]:
    return {"capabilities": [{"capability": "x-ignore-shared", "state": on}]}


def image_dir(files: SandboxFiles) -> Path:
    return files.base / "hibernate"


def state_path(files: SandboxFiles) -> Path:
    return image_dir(files) / "state"


def is_hibernated(files: SandboxFiles) -> bool:
    return (image_dir(files) / META).is_file()


def load_meta(files: SandboxFiles) -> dict[str, Any]:
    return read_json(image_dir(files) / META)


async def save(files: SandboxFiles) -> None:
    """Write the running VM's state into ``hibernate/`` (the VM stays stopped;
    the caller quits QEMU)."""
    boot = read_json(files.boot)
    shared = bool(boot.get("memory_shared"))
    tmp = files.base / "hibernate.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=0o700)
    try:
        async with await QmpClient.connect(files.qmp, timeout=10) as qmp:
            status = (await qmp.execute("query-status")).get("status")
            if status not in ("running", "paused"):
                raise InvalidStateTransition(f"sandbox {files.base.name} is not running")
            if status == "running":
                await qmp.execute("stop")
            # set either way: a VM restored from a snapshot still has it on
            await qmp.execute("migrate-set-capabilities", _ignore_shared(shared))
            fd = os.open(tmp / "state", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                await qmp.execute("getfd", {"fdname": "hibernate"}, fds=[fd])
            finally:
                os.close(fd)
            await qmp.execute("migrate", {"uri": "fd:hibernate"})
            await wait_migration(qmp, "saving the VM state")
        meta = {k: boot.get(k) for k in _BOOT_KEYS}
        meta["memory_in_state"] = not shared
        write_json(tmp / META, meta)
        await asyncio.to_thread(_fsync_tree, tmp)
        tmp.rename(image_dir(files))
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, TimeoutError, QmpClosed, QmpError)):
            raise RuntimeFailure(f"hibernate of {files.base.name} failed: {exc}") from exc
        raise


def _fsync_tree(path: Path) -> None:
    for child in (*path.iterdir(), path):
        fd = os.open(child, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def load(qmp: QmpClient, files: SandboxFiles, meta: dict[str, Any]) -> None:
    """Load the hibernated state into a QEMU started with ``-incoming defer``."""
    await qmp.execute("migrate-set-capabilities", _ignore_shared(not meta.get("memory_in_state")))
    fd = os.open(state_path(files), os.O_RDONLY | os.O_CLOEXEC)
    try:
        await qmp.execute("getfd", {"fdname": "hibernate"}, fds=[fd])
    finally:
        os.close(fd)
    await qmp.execute("migrate-incoming", {"uri": "fd:hibernate"})
    await wait_migration(qmp, "loading the VM state")
    await qmp.execute("cont")


def discard(files: SandboxFiles) -> None:
    for path in (image_dir(files), files.base / "hibernate.tmp"):
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)
