"""Starting one sandbox's VM: a cold boot, or a restore from a memory snapshot.

Both end with a QEMU process running the guest and ``boot.json`` saying how
it was started (accel, kernel, initramfs, command line, whether its RAM is a
shared file that can be snapshotted).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import RuntimeFailure
from ..base import SandboxSpec
from . import guest, hibernate, snapshots
from .accel import TCG_TB_MIB, AccelChoice
from .boot import boot_files, spawn
from .cgroups import VmCgroup
from .cmdline import DiskLayer, VmConfig, host_tsc_khz, kernel_cmdline
from .files import SandboxFiles, write_json
from .net import GuestNic
from .process import kill_and_wait

__all__ = ["CONTROL_TIMEOUT", "RESET_TIMEOUT", "Launcher"]

RESET_TIMEOUT = 60.0  # a restored agent letting go of the snapshot's host (TCG: seconds)
CONTROL_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class Launcher:
    spec: SandboxSpec
    files: SandboxFiles
    accel: AccelChoice
    disks: tuple[DiskLayer, ...]  # base first, the sandbox's writable overlay last
    qemu_bin: str
    qemu_version: str
    run_as: str | None  # None: QEMU keeps root
    quiet_console: bool
    kernels_dir: Path
    cgroup: VmCgroup | None
    nic: GuestNic | None = None  # the sandbox's network (net.py), None for mode none

    def config(self, **kw: Any) -> VmConfig:
        files = self.files
        return VmConfig(
            name=self.spec.sandbox_id,
            qemu=self.qemu_bin,
            accel=self.accel,
            vcpus=self.spec.vcpus,
            memory_mib=self.spec.memory_mib,
            disks=self.disks,
            console=files.console,
            qmp=files.qmp,
            agent_socket=files.agent_socket,
            control_socket=files.control,
            pidfile=files.pidfile,
            run_as=self.run_as,
            nic=self.nic,
            **kw,
        )

    async def cold_boot(self) -> None:
        """Boot the kernel and initramfs of today's agent, with fresh RAM."""
        boot = await asyncio.to_thread(boot_files, self.kernels_dir)
        append = kernel_cmdline(
            accel=self.accel.name,
            tsc_khz=host_tsc_khz(),
            hostname=self.spec.hostname,
            quiet=self.quiet_console,
            nic=self.nic,
        )
        self.files.memory.unlink(missing_ok=True)  # a cold boot starts from zeroed RAM
        cfg = self.config(
            kernel=boot.kernel.vmlinux,
            initrd=boot.initramfs.path,
            append=append,
            memory_file=self.files.memory,
            memory_shared=True,
        )
        pid, qmp = await spawn(cfg, self.files, self.cgroup, TCG_TB_MIB)
        await qmp.close()
        self._write_boot(cfg, pid, mode="cold", kernel_version=boot.kernel.version)

    async def restore(self, snapshot: snapshots.SnapshotInfo) -> None:
        """Start from ``snapshot``: its RAM mapped copy-on-write, its device state
        loaded; returns once the agent waits for a new host and the clock is set."""
        for key, have in (("qemu_version", self.qemu_version), ("accel", self.accel.name)):
            if snapshot.get_str(key) != have:
                raise RuntimeFailure(
                    f"snapshot {snapshot.path} was taken with {key} "
                    f"{snapshot.get_str(key)}, this host has {have}"
                )
        cfg = self.config(
            kernel=Path(snapshot.get_str("kernel")),
            initrd=Path(snapshot.get_str("initramfs")),
            append=snapshot.get_str("append"),
            memory_file=snapshot.memory,
            memory_shared=False,
            incoming=True,
        )
        pid, qmp = await spawn(cfg, self.files, self.cgroup, TCG_TB_MIB)
        try:
            await snapshots.incoming(qmp, snapshot)
            await qmp.close()
            # the snapshot's host connection must be gone before a new host
            # connects; the restored clock is as old as the snapshot
            await guest.control(
                self.files.control,
                f"agent-idle {RESET_TIMEOUT:g}",
                guest.time_command,
                timeout=RESET_TIMEOUT + CONTROL_TIMEOUT,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await kill_and_wait(pid, str(self.files.qmp))
            raise
        finally:
            await qmp.close()
        self._write_boot(
            cfg,
            pid,
            mode="restore",
            kernel_version=snapshot.get_str("kernel_version"),
            snapshot=str(snapshot.path),
        )

    async def wake(self, meta: dict[str, Any]) -> None:
        """Resume a hibernated VM (hibernate.py) over its own RAM file."""
        if meta.get("qemu_version") != self.qemu_version or meta.get("accel") != self.accel.name:
            raise RuntimeFailure(
                f"{self.files.base.name} hibernated under QEMU {meta.get('qemu_version')} "
                f"({meta.get('accel')}); this host has {self.qemu_version} ({self.accel.name})"
            )
        cfg = self.config(
            kernel=Path(str(meta["kernel"])),
            initrd=Path(str(meta["initramfs"])),
            append=str(meta["append"]),
            memory_file=self.files.memory,
            memory_shared=True,
            incoming=True,
        )
        pid, qmp = await spawn(cfg, self.files, self.cgroup, TCG_TB_MIB)
        try:
            await hibernate.load(qmp, self.files, meta)
            await qmp.close()
            await guest.control(
                self.files.control,
                f"agent-idle {RESET_TIMEOUT:g}",
                guest.time_command,
                timeout=RESET_TIMEOUT + CONTROL_TIMEOUT,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await kill_and_wait(pid, str(self.files.qmp))
            raise
        finally:
            await qmp.close()
        self._write_boot(cfg, pid, mode="wake", kernel_version=meta.get("kernel_version"))

    def _write_boot(self, cfg: VmConfig, pid: int, **extra: Any) -> None:
        write_json(
            self.files.boot,
            {
                "pid": pid,
                "accel": cfg.accel.name,
                "cpu": cfg.accel.cpu,
                "qemu_version": self.qemu_version,
                "kernel": str(cfg.kernel),
                "initramfs": str(cfg.initrd),
                "append": cfg.append,
                "memory_shared": cfg.memory_shared,
                **extra,
            },
        )
