"""Launching one Firecracker VMM: its working directory, its command line, the
process, and the API calls of a cold boot.

Every path sent to the API is relative to the VMM's working directory (the
sandbox directory, or the chroot's root when jailed; see ``files.py``), except
the kernel and initramfs of an unjailed VMM, which are not part of snapshots.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import RuntimeFailure
from ..base import SandboxSpec
from . import files as F
from .api import Balloon, BootSource, Drive, FirecrackerApi, MachineConfig, RateLimiter, Vsock
from .files import ProcessRecord, SandboxFiles
from .host import GuestBoot
from .jailer import JailerConfig, jailer_argv
from .vsock import AGENT_PORT

__all__ = [
    "BOOT_ARGS",
    "GUEST_CID",
    "ROOT_DRIVE",
    "Devices",
    "boot_args",
    "configure",
    "firecracker_argv",
    "link_or_copy",
    "prepare_workdir",
    "spawn",
    "wait_api",
]

GUEST_CID = 3
ROOT_DRIVE = "rootfs"
BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"
KERNEL, INITRD = "vmlinux", "initrd"


@dataclass(frozen=True, slots=True)
class Devices:
    """Device settings that are the same for every sandbox of a runtime."""

    disk_rate_limiter: RateLimiter | None = None
    balloon_stats_interval_s: int = 0


def boot_args(spec: SandboxSpec, extra: str = "") -> str:
    """The guest kernel command line. Firecracker appends ``root=/dev/vda rw``
    for the root drive (and, on x86_64, its virtio-mmio device list); the
    ``atelier.*`` words are for the guest's init."""
    words = [BOOT_ARGS, f"atelier.agent=vsock:{AGENT_PORT}", f"atelier.hostname={spec.hostname}"]
    if extra.strip():
        words.append(extra.strip())
    return " ".join(words)


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard link ``src`` at ``dest`` (same inode); a copy across filesystems."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(src, dest)


def prepare_workdir(
    files: SandboxFiles, jailer: JailerConfig | None, jid: str, boot: GuestBoot | None
) -> Path:
    """Make the VMM's working directory ready; returns it."""
    for path in (files.log, files.metrics):
        path.touch(mode=0o600)  # Firecracker opens these, it never creates them
    if jailer is None:
        return files.base
    chroot = jailer.chroot_dir(jid)
    if chroot.exists():
        shutil.rmtree(chroot)
    root = jailer.chroot_root(jid)
    root.mkdir(parents=True, mode=0o750)
    # the jailed VMM binds its sockets and writes snapshot files in its "/"
    os.chown(root, jailer.uid, jailer.gid)
    mine = [F.DISK, F.LOG, F.METRICS]
    if files.restore.exists():
        mine += [F.RESTORE_STATE, F.RESTORE_MEM]
    for name in mine:
        link_or_copy(files.base / name, root / name)
        if name != F.RESTORE_MEM:  # the snapshot's memory file is shared: not chowned
            os.chown(root / name, jailer.uid, jailer.gid)
    if boot is not None:
        link_or_copy(boot.kernel, root / KERNEL)
        if boot.initrd is not None:
            link_or_copy(boot.initrd, root / INITRD)
    return root


def firecracker_argv(
    binary: Path, jailer: JailerConfig | None, jid: str, spec: SandboxSpec, workdir: Path
) -> list[str]:
    if jailer is not None:
        return jailer_argv(
            jailer,
            jid,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            firecracker_args=["--api-sock", "/" + F.API_SOCK],
        )
    return [str(binary), "--api-sock", str(workdir / F.API_SOCK), "--id", jid]


def spawn(argv: list[str], workdir: Path, files: SandboxFiles) -> ProcessRecord:
    """Start the VMM in its own session (it outlives the server, as runsc
    sandboxes do), output to the console log; record its identity."""
    with files.console.open("ab") as console:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=console,
            start_new_session=True,
        )
    # reap it whenever it exits; never kill it when this object goes away
    # (an asyncio subprocess transport would)
    threading.Thread(target=proc.wait, name=f"fc-reap-{proc.pid}", daemon=True).start()
    record = ProcessRecord.of(proc.pid)
    if record is None:
        raise RuntimeFailure(f"firecracker exited at once (exit {proc.poll()})")
    files.save_process(record)
    return record


async def wait_api(api: FirecrackerApi, record: ProcessRecord, timeout: float = 10) -> None:
    """Wait until the VMM answers ``GET /`` (or died, or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        if not record.alive():
            raise RuntimeFailure("firecracker exited before its API came up")
        if api.socket_path.exists():
            try:
                await api.describe_instance()
                return
            except RuntimeFailure:
                if time.monotonic() >= deadline:
                    raise
        elif time.monotonic() >= deadline:
            raise RuntimeFailure(f"firecracker API socket {api.socket_path} did not appear")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def configure(
    api: FirecrackerApi,
    spec: SandboxSpec,
    boot: GuestBoot,
    devices: Devices,
    *,
    jailed: bool,
) -> None:
    """The pre-boot configuration of a cold boot (InstanceStart follows)."""
    kernel = KERNEL if jailed else str(boot.kernel)
    initrd = None if boot.initrd is None else INITRD if jailed else str(boot.initrd)
    await api.put_machine_config(
        MachineConfig(vcpu_count=spec.vcpus, mem_size_mib=spec.memory_mib, smt=False)
    )
    await api.put_boot_source(
        BootSource(
            kernel_image_path=kernel,
            boot_args=boot_args(spec, boot.extra_args),
            initrd_path=initrd,
        )
    )
    await api.put_drive(
        Drive(
            drive_id=ROOT_DRIVE,
            path_on_host=F.DISK,
            is_root_device=True,
            is_read_only=False,
            rate_limiter=devices.disk_rate_limiter,
        )
    )
    await api.put_vsock(Vsock(guest_cid=GUEST_CID, uds_path=F.VSOCK_SOCK))
    await api.put_balloon(
        Balloon(
            amount_mib=0,
            deflate_on_oom=True,
            stats_polling_interval_s=devices.balloon_stats_interval_s,
        )
    )
