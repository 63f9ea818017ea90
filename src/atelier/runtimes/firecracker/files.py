"""The files of one firecracker sandbox, and the disk and process helpers.

::

    <data_dir>/firecracker/sandboxes/<id>/       0700, root
      spec.json        the SandboxSpec; written last by create (= "complete")
      vm.json          how the VM runs (jailed or not, its working directory)
                       and the snapshot it was created from, if any
      rootfs.raw       the sandbox's disk: a raw ext4 file of disk_mib MiB,
                       a copy-on-write copy of the template's disk.ext4
      restore.json     create_from_snapshot: the snapshot to load on first start
      restore.vmstate  \\ links to / copies of the snapshot's files, removed
      restore.mem      /  once the restore succeeded
      firecracker.pid  "<pid> <start time> <boot id>" of the running VMM
      started          marker: booted at least once
      console.log      the guest's serial console and Firecracker's stdout/stderr
      firecracker.log  Firecracker's own log (PUT /logger)
      metrics.json     Firecracker's metrics (PUT /metrics)
      api.sock         Firecracker's API socket        \\ unjailed; when jailed
      vsock.sock       the hybrid vsock's host socket  / they are in the chroot

Firecracker runs with its working directory at the sandbox directory (or, when
jailed, at the chroot's root, where rootfs.raw and the logs are hard-linked),
and every path sent to its API is *relative*. Firecracker records the drive
and vsock paths in a snapshot, so a snapshot restored into another sandbox
opens that sandbox's own ``rootfs.raw`` and binds its own ``vsock.sock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InvalidRequest, RuntimeFailure
from ..base import SandboxSpec
from ..common import ID_PATTERN, boot_id, check_id, spec_from_json, spec_to_json

__all__ = [
    "ID_PATTERN",
    "ProcessRecord",
    "SandboxFiles",
    "boot_id",
    "check_id",
    "copy_file",
    "grow_disk",
    "is_ext_image",
    "kill_and_wait",
    "read_json",
    "read_tail",
    "spec_from_json",
    "spec_to_json",
    "wait_gone",
    "write_json",
]

MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the NUL

API_SOCK = "api.sock"
VSOCK_SOCK = "vsock.sock"
DISK = "rootfs.raw"
LOG = "firecracker.log"
METRICS = "metrics.json"
RESTORE_STATE = "restore.vmstate"
RESTORE_MEM = "restore.mem"


@dataclass(frozen=True, slots=True)
class SandboxFiles:
    base: Path

    @property
    def spec(self) -> Path:
        return self.base / "spec.json"

    @property
    def vm(self) -> Path:
        return self.base / "vm.json"

    @property
    def disk(self) -> Path:
        return self.base / DISK

    @property
    def restore(self) -> Path:
        return self.base / "restore.json"

    @property
    def pid(self) -> Path:
        return self.base / "firecracker.pid"

    @property
    def started(self) -> Path:
        return self.base / "started"

    @property
    def console(self) -> Path:
        return self.base / "console.log"

    @property
    def log(self) -> Path:
        return self.base / LOG

    @property
    def metrics(self) -> Path:
        return self.base / METRICS

    def complete(self) -> bool:
        return self.spec.is_file()

    def save_spec(self, spec: SandboxSpec) -> None:
        write_json(self.spec, spec_to_json(spec))

    def load_spec(self) -> SandboxSpec:
        return spec_from_json(read_json(self.spec))

    def save_vm(self, workdir: Path, *, jailed: bool, snapshot: Path | None = None) -> None:
        """How the VM runs (fixed at create) and the snapshot it came from."""
        data = {"jailed": jailed, "workdir": str(workdir), "snapshot": snapshot and str(snapshot)}
        write_json(self.vm, data)

    def jailed(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return bool(read_json(self.vm).get("jailed"))
        return False

    def workdir(self) -> Path | None:
        """Firecracker's working directory, as fixed at create (None: unknown)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return Path(read_json(self.vm)["workdir"])
        return None

    def save_process(self, record: ProcessRecord) -> None:
        tmp = self.pid.with_suffix(".tmp")
        tmp.write_text(f"{record.pid} {record.start_time} {record.boot_id}\n")
        tmp.replace(self.pid)

    def load_process(self) -> ProcessRecord | None:
        try:
            pid, start, boot = self.pid.read_text().split()
            return ProcessRecord(int(pid), int(start), boot)
        except (OSError, ValueError):
            return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def read_tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - limit))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


# -- disks ------------------------------------------------------------------------
async def _run(argv: list[str], timeout: float = 600) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        text = out.decode("utf-8", "replace").strip()[-2000:]
        raise RuntimeFailure(
            f"{' '.join(argv[:2])} ... exited {proc.returncode}: {text or '(no output)'}",
            details={"argv": argv},
        )


async def copy_file(src: Path, dest: Path) -> None:
    """Copy-on-write copy where the filesystem can (btrfs, XFS with reflink);
    elsewhere (ext4) a real copy that keeps holes (sparse)."""
    await _run(["cp", "--reflink=auto", "--sparse=always", "--", str(src), str(dest)])


def is_ext_image(path: Path) -> bool:
    """An ext2/3/4 filesystem image (superblock magic 0xEF53 at byte 1080)."""
    try:
        with path.open("rb") as fh:
            fh.seek(1080)
            return fh.read(2) == b"\x53\xef"
    except OSError:
        return False


async def grow_disk(path: Path, size_mib: int) -> None:
    """Make the raw disk ``size_mib`` MiB (sparse) and, if it holds ext4, grow
    the filesystem to fill it, so the guest's disk limit is ``size_mib``."""
    size = size_mib * 2**20
    current = path.stat().st_size
    if current > size:
        raise InvalidRequest(
            f"disk_mib {size_mib} is smaller than the template's disk image "
            f"({current / 2**20:.0f} MiB)"
        )
    if current == size:
        return
    await _run(["truncate", "-s", str(size), "--", str(path)])
    if is_ext_image(path):
        # the image was never mounted, but resize2fs insists on a fresh check
        await _run(["e2fsck", "-f", "-p", str(path)])
        await _run(["resize2fs", "-p", str(path)])


# -- the VMM process -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """Identifies one process across pid reuse: pid + start time + boot."""

    pid: int
    start_time: int  # clock ticks after boot, field 22 of /proc/<pid>/stat
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> ProcessRecord | None:
        start = _stat(pid)
        return None if start is None else cls(pid, start[1], boot_id())

    def alive(self) -> bool:
        """Still the same process, and not a zombie."""
        if self.boot_id != boot_id():
            return False
        now = _stat(self.pid)
        return now is not None and now[1] == self.start_time and now[0] not in ("Z", "X")


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


async def kill_and_wait(record: ProcessRecord, timeout: float = 10.0) -> None:
    """SIGKILL the process (if it is still ``record``) and wait until it is gone."""
    if record.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
    await wait_gone(record, timeout)


async def wait_gone(record: ProcessRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while record.alive():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True
