"""Memory snapshots of a running VM and restoring them into new VMs.

Saving (the VM is paused throughout, so memory and disk are one instant):
``x-ignore-shared`` + ``migrate`` to a descriptor the host opened leaves the
guest RAM out of the stream (it lives in the ``share=on`` memory file), so
the stream is only device state (~70 KB, ~15 ms); then the memory file is
copied sparsely, the disk overlay is copied, and the source continues.

Restoring: QEMU starts with ``-incoming defer`` and the snapshot's memory
file mapped ``share=off`` -- copy-on-write, so one snapshot serves any
number of clones -- over a new qcow2 overlay backed by the snapshot's disk;
``x-ignore-shared`` again, ``migrate-incoming`` from the state file,
``cont``.

The agent port: a snapshot taken while a host was connected to the agent
remembers that connection. The restored QEMU tells the guest that host is
gone; the agent then closes and reopens its port, and only after that may a
new host connect -- otherwise its bytes could land in the old connection.
The runtime waits for that with ``agent-idle`` on the guest's control port
(QMP's ``VSERPORT_CHANGE`` events cannot tell: QEMU throttles them to one
a second per port, dropping the intermediate "closed").
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...errors import InvalidRequest, RuntimeFailure
from .cmdline import DiskLayer
from .files import (
    SNAPSHOT_META,
    SandboxFiles,
    layers_from_json,
    layers_to_json,
    read_json,
    write_json,
)
from .process import run_tool
from .qmp import QmpClient, QmpClosed, QmpError

__all__ = [
    "FORMAT_VERSION",
    "SnapshotInfo",
    "agent_connected",
    "incoming",
    "load_snapshot",
    "save",
    "take",
    "wait_migration",
]

FORMAT_VERSION = 1
_MIGRATE_TIMEOUT = 120.0
_IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}


class SnapshotInfo:
    """A snapshot directory and its ``snapshot.json``."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta

    @property
    def state(self) -> Path:
        return self.path / "state"

    @property
    def memory(self) -> Path:
        return self.path / "memory"

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"

    @property
    def chain(self) -> tuple[DiskLayer, ...]:
        """The layers under the snapshot's disk (base image first)."""
        return layers_from_json(self.meta.get("chain"))

    def get_int(self, key: str) -> int:
        value = self.meta.get(key)
        if not isinstance(value, int):
            raise RuntimeFailure(f"snapshot {self.path}: {key} missing")
        return value

    def get_str(self, key: str) -> str:
        value = self.meta.get(key)
        if not isinstance(value, str):
            raise RuntimeFailure(f"snapshot {self.path}: {key} missing")
        return value


def load_snapshot(path: Path) -> SnapshotInfo:
    if not (path / SNAPSHOT_META).is_file():
        raise InvalidRequest(f"{path} is not a complete qemu snapshot (no {SNAPSHOT_META})")
    info = SnapshotInfo(path, read_json(path / SNAPSHOT_META))
    if info.meta.get("format") != FORMAT_VERSION or info.meta.get("runtime") != "qemu":
        raise InvalidRequest(f"{path}: not a qemu snapshot of format {FORMAT_VERSION}")
    for part in (info.state, info.memory, info.disk):
        if not part.is_file():
            raise InvalidRequest(f"snapshot {path} is missing {part.name}")
    for layer in info.chain:
        if not layer.path.is_file():
            raise InvalidRequest(f"snapshot {path}: its base disk {layer.path} is gone")
    return info


def agent_connected(socket: Path, table: Path = Path("/proc/net/unix")) -> bool:
    """Whether a client is connected to the listening unix socket at ``socket``
    (QEMU's accepted end carries the socket's path, in state CONNECTED)."""
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return False
    want = str(socket)
    for line in lines:
        fields = line.split()
        # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) >= 8 and fields[7] == want and fields[5] == "03":
            return True
    return False


async def wait_migration(qmp: QmpClient, what: str) -> None:
    deadline = time.monotonic() + _MIGRATE_TIMEOUT
    delay = 0.002
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            detail = info.get("error-desc", status) if isinstance(info, dict) else status
            raise RuntimeFailure(f"{what} failed: {detail}")
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"{what} did not finish within {_MIGRATE_TIMEOUT:g}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def save(
    qmp: QmpClient,
    dest: Path,
    *,
    memory: Path,
    overlay: Path,
    agent_socket: Path,
    chain: tuple[DiskLayer, ...],
    meta: dict[str, Any],
) -> None:
    """Snapshot the VM behind ``qmp`` into ``dest`` (an empty directory).

    The caller stopped the VM and continues it afterwards.
    """
    meta = {**meta, "agent_connected": agent_connected(agent_socket)}
    await qmp.execute("migrate-set-capabilities", _IGNORE_SHARED)
    fd = os.open(dest / "state", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        await qmp.execute("getfd", {"fdname": "snapshot"}, fds=[fd])
    finally:
        os.close(fd)
    await qmp.execute("migrate", {"uri": "fd:snapshot"})
    await wait_migration(qmp, "saving the device state")
    for source, target in ((memory, dest / "memory"), (overlay, dest / "disk.qcow2")):
        await run_tool(
            ["cp", "--sparse=always", "--reflink=auto", str(source), str(target)], timeout=900
        )
    meta.update(
        format=FORMAT_VERSION,
        runtime="qemu",
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    meta["chain"] = layers_to_json(chain)
    write_json(dest / SNAPSHOT_META, meta)
    for name in ("state", "memory", "disk.qcow2", SNAPSHOT_META):
        (dest / name).chmod(0o400)


async def take(
    files: SandboxFiles, dest: Path, *, chain: tuple[DiskLayer, ...], meta: dict[str, Any]
) -> None:
    """Snapshot the running VM of ``files`` into ``dest`` (created; removed on
    failure). The VM is paused for the copy and continues afterwards."""
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        async with await QmpClient.connect(files.qmp, timeout=10) as qmp:
            running = (await qmp.execute("query-status")).get("status") == "running"
            if running:
                await qmp.execute("stop")
            try:
                await save(
                    qmp,
                    dest,
                    memory=files.memory,
                    overlay=files.overlay,
                    agent_socket=files.agent_socket,
                    chain=chain,
                    meta=meta,
                )
            finally:
                if running:
                    await qmp.execute("cont")
    except BaseException as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, (OSError, TimeoutError, QmpClosed, QmpError)):
            raise RuntimeFailure(f"snapshot of {files.base.name} failed: {exc}") from exc
        raise


async def incoming(qmp: QmpClient, snapshot: SnapshotInfo) -> None:
    """Load ``snapshot`` into a QEMU started with ``-incoming defer`` and run it."""
    await qmp.execute("migrate-set-capabilities", _IGNORE_SHARED)
    fd = os.open(snapshot.state, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await qmp.execute("getfd", {"fdname": "snapshot"}, fds=[fd])
    finally:
        os.close(fd)
    await qmp.execute("migrate-incoming", {"uri": "fd:snapshot"})
    await wait_migration(qmp, "loading the device state")
    await qmp.execute("cont")
