"""Boot files, and starting and stopping one QEMU process.

:func:`boot_files` resolves the guest kernel (fetched once into
``<data_dir>/kernels``) and the initramfs for the current agent sources
(cached beside the kernel). :func:`spawn` turns a :class:`VmConfig` into a
running QEMU in its cgroup and returns a connected QMP client;
:func:`quit_vm` ends it after the guest flushed its disks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ...agent import bootstrap
from ...errors import RuntimeFailure
from ...images.initramfs import BuiltInitramfs, InitramfsSpec, build_initramfs
from ...images.kernel import GuestKernel, ensure_kernel
from . import guest
from .cgroups import VmCgroup, memory_limit_mib
from .cmdline import AGENT_PORT, VmConfig, build_argv, open_disk_fds
from .files import SandboxFiles
from .process import Launched, launch
from .qmp import QmpClient, QmpClosed, QmpError

__all__ = ["BootFiles", "agent_argv", "boot_files", "quit_vm", "spawn", "tail"]

_QMP_WAIT = 60.0  # QEMU start-up (opening images, mapping RAM) until QMP answers


@dataclass(frozen=True, slots=True)
class BootFiles:
    kernel: GuestKernel
    initramfs: BuiltInitramfs


def agent_argv() -> list[str]:
    """The agent's argv inside the guest: the usual one, serving the virtio-serial port."""
    return [*bootstrap.agent_argv(), "--serial", AGENT_PORT]


def boot_files(kernels_dir: Path) -> BootFiles:
    """Kernel and initramfs for a cold boot (blocking: fetches/builds on first use)."""
    kernel = ensure_kernel(kernels_dir)
    spec = InitramfsSpec(
        kernel_version=kernel.version,
        modules_dir=kernel.modules_dir,
        agent_dir=bootstrap.package_dir(),
        agent_argv=agent_argv(),
    )
    return BootFiles(kernel, build_initramfs(spec, kernel.root / "initramfs"))


def tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - limit))
            return fh.read().decode(errors="replace").strip()
    except OSError:
        return ""


async def spawn(
    cfg: VmConfig,
    files: SandboxFiles,
    cgroup: VmCgroup | None,
    tb_mib: int,
) -> tuple[int, QmpClient]:
    """Start QEMU for ``cfg`` and connect to its QMP socket; kill it on failure."""
    for stale in (files.qmp, files.control, files.agent_socket, files.pidfile):
        stale.unlink(missing_ok=True)
    procs: list[Path] = []
    if cgroup is not None:
        limit = memory_limit_mib(cfg.memory_mib, cfg.accel.name, tb_mib) * 1024 * 1024
        procs = cgroup.create(cfg.vcpus, limit)
    launched: Launched | None = None
    try:
        layer_fds = open_disk_fds(cfg.disks)
        try:
            argv = build_argv(cfg, layer_fds)
            flat = [fd for fds in layer_fds for fd in fds]
            offset = files.qemu_log.stat().st_size if files.qemu_log.exists() else 0
            launched = await asyncio.to_thread(
                launch, argv, log=files.qemu_log, pass_fds=flat, cgroup_procs=procs
            )
        finally:
            for fds in layer_fds:
                for fd in fds:
                    os.close(fd)
        files.pidfile.write_text(f"{launched.pid}\n")
        return launched.pid, await _connect_qmp(launched, files, offset)
    except BaseException:
        if launched is not None and not launched.exited.is_set():
            # by its handle, not by command line: it may still be exec'ing
            with contextlib.suppress(ProcessLookupError):
                os.kill(launched.pid, signal.SIGKILL)
            await asyncio.to_thread(launched.exited.wait, 10)
        if cgroup is not None:
            cgroup.remove()
        raise


async def _connect_qmp(launched: Launched, files: SandboxFiles, offset: int) -> QmpClient:
    deadline = time.monotonic() + _QMP_WAIT
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if launched.exited.is_set():
            said = _since(files.qemu_log, offset) or "(no output)"
            raise RuntimeFailure(
                f"QEMU exited during start-up: {said}",
                details={"qemu_log": str(files.qemu_log), "console": str(files.console)},
            )
        if files.qmp.exists():
            try:
                return await QmpClient.connect(files.qmp, timeout=10)
            except (OSError, TimeoutError, QmpClosed) as exc:
                last = exc
        await asyncio.sleep(0.01)
    raise RuntimeFailure(f"QEMU's QMP socket did not answer within {_QMP_WAIT:g}s: {last!r}")


def _since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read()[-2000:].decode(errors="replace").strip()
    except OSError:
        return ""


async def quit_vm(files: SandboxFiles, sync_timeout: float) -> bool:
    """Flush the guest's page cache (control port ``sync``), then QMP ``quit``;
    False if QEMU could not be asked (the caller kills it)."""
    try:
        async with await QmpClient.connect(files.qmp, timeout=10) as qmp:
            status = (await qmp.execute("query-status")).get("status")
            if status == "paused":
                await qmp.execute("cont")
            if status in ("running", "paused"):
                with contextlib.suppress(RuntimeFailure):  # a hung guest: quit anyway
                    await guest.sync_disks(files.control, timeout=sync_timeout)
            with contextlib.suppress(QmpClosed):
                await qmp.execute("quit")
    except (OSError, TimeoutError, QmpClosed, QmpError):
        return False
    return True
