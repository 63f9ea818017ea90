"""The QEMU runtime: each sandbox is one ``qemu-system-x86_64 -M microvm`` process.

create      sandbox dir, qcow2 overlay over the template's ext4 image
start       boot (kernel + initramfs -> agent), or restore a memory snapshot
stop        guest ``sync`` over the control port, QMP ``quit`` (SIGKILL fallback)
pause/resume  QMP ``stop``/``cont``
snapshot    memory + device state + disk of a running VM (see snapshots.py)
destroy     kill, remove the cgroups and the dir

KVM where it can boot a standard guest, TCG otherwise (accel.py). QEMU runs
in its own session and cgroup, drops root (``-runas``) after start-up and
runs under its seccomp filter. Files: see files.py; command line: cmdline.py.

A sandbox whose spec has a network policy other than ``none`` gets the
gVisor runtime's namespace, veth, nftables rules and DNS (the same
NetworkManager), made before every start, and a TAP device bridged to the
veth inside that namespace, where QEMU runs (net.py). Memory snapshots and
hibernation of such sandboxes are refused: a restored guest would come back
with the snapshot's address and without its namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ...config import Settings
from ...errors import (
    AtelierError,
    Conflict,
    InvalidRequest,
    InvalidStateTransition,
    RuntimeFailure,
    RuntimeUnavailable,
    SandboxNotFound,
)
from ...images.diskimage import create_overlay, ensure_base_disk
from ...images.kernel import GuestKernel, find_kernel
from ...network import NetworkManager
from ..base import Capability, RuntimeAvailability, RuntimeState, SandboxSpec
from ..common import boot_id as _boot_id
from . import guest, hibernate, net, snapshots
from .accel import AccelChoice, detect_accel
from .boot import boot_files, quit_vm
from .cgroups import VmCgroup
from .cmdline import DiskLayer
from .files import (
    SandboxFiles,
    check_id,
    layers_from_json,
    layers_to_json,
    read_json,
    validate_spec,
    write_json,
)
from .host import probe, qemu_version
from .launch import CONTROL_TIMEOUT, Launcher
from .process import find_processes, is_alive, kill_and_wait, read_pid, wait_gone
from .qmp import QmpClient, QmpClosed, QmpError

__all__ = ["QemuRuntime"]

_STATES = {"running": RuntimeState.RUNNING, "paused": RuntimeState.PAUSED}


class QemuRuntime:
    """Sandboxes as QEMU microVMs on this host."""

    name = "qemu"

    def __init__(
        self,
        settings: Settings,
        *,
        accel: str | None = None,
        qemu_bin: str | None = None,
        run_as: str | None = None,
        quiet_console: bool = True,
        network: NetworkManager | None = None,
    ) -> None:
        """``accel`` forces kvm/tcg (default: ``ATELIER_QEMU_ACCEL`` or a probe);
        ``run_as`` is the user QEMU drops to (default ``nobody``; ``root`` keeps root);
        ``network``: the host's NetworkManager, shared with the other runtimes
        (default: one of its own over ``<data_dir>/network``)."""
        self.settings = settings
        self.qemu_bin = qemu_bin or os.environ.get("ATELIER_QEMU_BIN") or "qemu-system-x86_64"
        self.forced_accel = accel or os.environ.get("ATELIER_QEMU_ACCEL") or None
        self.run_as = run_as or os.environ.get("ATELIER_QEMU_USER") or "nobody"
        self.quiet_console = quiet_console
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._availability: RuntimeAvailability | None = None
        self._version: str | None = None
        self._network = network

    # -- paths ------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(os.path.abspath(self.settings.data_dir)) / "qemu"

    @property
    def kernels_dir(self) -> Path:
        return Path(os.path.abspath(self.settings.data_dir)) / "kernels"

    def files(self, sandbox_id: str) -> SandboxFiles:
        return SandboxFiles(self.root / check_id(sandbox_id))

    def agent_socket(self, sandbox_id: str) -> Path:
        return self.files(sandbox_id).agent_socket

    def log_path(self, sandbox_id: str) -> Path:
        return self.files(sandbox_id).console

    @property
    def network(self) -> NetworkManager:
        """Sandbox networks (shared with the gVisor runtime when the host made both)."""
        if self._network is None:
            self._network = NetworkManager(self.settings)
        return self._network

    def load_spec(self, files: SandboxFiles) -> SandboxSpec:
        """The saved spec with its network policy (kept in its own file, net.py)."""
        return dataclasses.replace(files.load_spec(), network=net.load_policy(files.base))

    # -- capabilities / availability ------------------------------------------------
    def capabilities(self) -> Capability:
        return (
            Capability.PAUSE
            | Capability.MEMORY_SNAPSHOT
            | Capability.PERSISTENT_DISK
            | Capability.HIBERNATE
            | Capability.NETWORK
        )

    def accel(self) -> AccelChoice:
        return detect_accel(self.forced_accel)

    def kernel(self) -> GuestKernel | None:
        """The guest kernel cold boots use (None until it was fetched)."""
        return find_kernel(self.kernels_dir)

    def availability(self) -> RuntimeAvailability:
        if self._availability is None:
            self._availability = self._probe()
        return self._availability

    def _probe(self) -> RuntimeAvailability:
        ok, reason = probe(self.qemu_bin, self.run_as, self.accel(), self.kernel())
        return RuntimeAvailability(self.name, ok, reason)

    def qemu_version(self) -> str:
        return qemu_version(self.qemu_bin)

    def _require_available(self) -> AccelChoice:
        status = self.availability()
        if not status.available:
            raise RuntimeUnavailable(f"qemu runtime cannot run here: {status.reason}")
        return self.accel()

    @contextlib.asynccontextmanager
    async def _locked(self, sandbox_id: str) -> AsyncIterator[None]:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[sandbox_id] = lock
        async with lock:
            yield

    def _pid(self, files: SandboxFiles) -> int | None:
        pid = read_pid(files.pidfile)
        return pid if pid is not None and is_alive(pid, str(files.qmp)) else None

    def _cgroup(self, sandbox_id: str) -> VmCgroup | None:
        group = VmCgroup(sandbox_id)
        return group if group.available() else None

    async def prepare(self, rootfs: Path | None = None) -> None:
        """Fetch the kernel, build the initramfs and (for ``rootfs``) the disk image now."""
        await asyncio.to_thread(boot_files, self.kernels_dir)
        if rootfs is not None:
            await asyncio.to_thread(ensure_base_disk, rootfs)

    async def aclose(self) -> None:
        """Stop the network's background work (domain refresher, DNS forwarder);
        sandboxes keep running."""
        if self._network is not None:
            await self._network.aclose()

    def info(self, sandbox_id: str) -> dict[str, Any]:
        """What the sandbox runs on: accel, guest kernel, boot mode (for sandbox info)."""
        files = self.files(sandbox_id)
        out: dict[str, Any]
        try:
            boot = read_json(files.boot)
            out = {k: boot.get(k) for k in ("accel", "kernel_version", "mode", "qemu_version")}
        except AtelierError:
            kernel = self.kernel()
            out = {"accel": self.accel().name, "kernel_version": kernel.version if kernel else None}
        network = self.network.info(sandbox_id)
        out["network"] = network.to_json() if network is not None else {"mode": "none"}
        return out

    # -- create ---------------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> None:
        await self._create(spec, None)

    async def create_from_snapshot(self, spec: SandboxSpec, snapshot: Path) -> None:
        """Prepare a sandbox whose first ``start`` restores ``snapshot`` (vcpus,
        memory and disk size must be the snapshot's; its hostname is the snapshot's)."""
        await self._create(spec, Path(os.path.abspath(snapshot)))

    async def _create(self, spec: SandboxSpec, snapshot: Path | None) -> None:
        files = self.files(spec.sandbox_id)
        files.check_socket_paths()
        validate_spec(spec, self.settings)
        if snapshot is not None and net.networked(spec.network):
            raise InvalidRequest(_no_memory_state("restoring a memory snapshot", spec))
        net.check_tools(spec.network)
        self._require_available()
        info = await asyncio.to_thread(snapshots.load_snapshot, snapshot) if snapshot else None
        if info is not None:
            for key in ("vcpus", "memory_mib", "disk_mib"):
                if getattr(spec, key) != info.get_int(key):
                    raise InvalidRequest(
                        f"{key}={getattr(spec, key)} differs from the snapshot's "
                        f"{info.get_int(key)}; a restored VM keeps the snapshot's shape"
                    )
        async with self._locked(spec.sandbox_id):
            if files.complete():
                if self.load_spec(files) == spec:
                    return  # already created with this very spec
                raise Conflict(f"sandbox {spec.sandbox_id} already exists with another spec")
            if files.base.exists() or self._pid(files) is not None:
                await self._teardown(files)  # leftovers of a crash
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                files.base.mkdir(mode=0o700)
                files.run_dir.mkdir(mode=0o700)
                if info is None:
                    base = await asyncio.to_thread(ensure_base_disk, spec.rootfs)
                    if spec.disk_mib < base.size_mib:
                        raise InvalidRequest(
                            f"disk_mib={spec.disk_mib} is smaller than the template's "
                            f"image ({base.size_mib} MiB)"
                        )
                    chain: tuple[DiskLayer, ...] = (DiskLayer(base.path, "raw"),)
                    await asyncio.to_thread(create_overlay, base.path, files.overlay, spec.disk_mib)
                else:
                    chain = (*info.chain, DiskLayer(info.disk, "qcow2"))
                    await asyncio.to_thread(
                        create_overlay, info.disk, files.overlay, spec.disk_mib, "qcow2"
                    )
                    write_json(files.restore, {"snapshot": str(info.path)})
                write_json(files.disk_meta, {"chain": layers_to_json(chain)})
                net.save_policy(files.base, spec.network)
                files.save_spec(spec)  # last: marks the sandbox as complete
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self._teardown(files)
                if isinstance(exc, Exception) and not isinstance(exc, AtelierError):
                    raise RuntimeFailure(f"cannot create sandbox {spec.sandbox_id}: {exc}") from exc
                raise

    # -- start ----------------------------------------------------------------------
    async def start(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        accel = self._require_available()
        async with self._locked(sandbox_id):
            if not files.complete():
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist on this host")
            if self._pid(files) is not None:
                return
            if hibernate.is_hibernated(files):
                await self._wake(files, accel)  # never a cold boot: that loses the memory
                return
            spec = self.load_spec(files)
            self._cleanup_run(files)
            chain = layers_from_json(read_json(files.disk_meta).get("chain"))
            disks = (*chain, DiskLayer(files.overlay, "qcow2", writable=True))
            nic = None
            if net.networked(spec.network):
                assert spec.network is not None
                # (re)made before every start, like gVisor's; the tap joins it
                info = await self.network.setup(sandbox_id, spec.network)
                await net.attach_tap(str(info.netns))
                nic = net.guest_nic(info)
            launcher = self._launcher(spec, files, accel, disks, nic)
            if files.restore.exists() and not files.started.exists():
                snapshot = snapshots.load_snapshot(Path(read_json(files.restore)["snapshot"]))
                await launcher.restore(snapshot)
            else:
                await launcher.cold_boot()
            files.started.write_text(_boot_id())

    def _launcher(
        self,
        spec: SandboxSpec,
        files: SandboxFiles,
        accel: AccelChoice,
        disks: tuple[DiskLayer, ...],
        nic: net.GuestNic | None = None,
    ) -> Launcher:
        return Launcher(
            spec=spec,
            files=files,
            accel=accel,
            disks=disks,
            qemu_bin=self.qemu_bin,
            qemu_version=self.qemu_version(),
            run_as=None if self.run_as == "root" else self.run_as,
            quiet_console=self.quiet_console,
            kernels_dir=self.kernels_dir,
            cgroup=self._cgroup(spec.sandbox_id),
            nic=nic,
        )

    def _cleanup_run(self, files: SandboxFiles) -> None:
        """Remove what a previous run left (the VM is not running)."""
        for path in (files.qmp, files.control, files.agent_socket, files.pidfile, files.boot):
            path.unlink(missing_ok=True)
        files.memory.unlink(missing_ok=True)

    # -- stop / pause / resume --------------------------------------------------------
    async def stop(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            await self._stop(files)
            hibernate.discard(files)  # a hibernated sandbox's image goes

    async def _stop(self, files: SandboxFiles) -> None:
        pid = self._pid(files)
        if pid is not None:
            marker = str(files.qmp)
            asked = await quit_vm(files, sync_timeout=CONTROL_TIMEOUT)
            if not asked or not await wait_gone(pid, marker, timeout=15):
                await kill_and_wait(pid, marker)
        self._cleanup_run(files)
        if files.base.is_dir():
            VmCgroup(files.base.name).remove()

    async def _qmp_verb(self, sandbox_id: str, *commands: str) -> SandboxFiles:
        files = self.files(sandbox_id)
        if self._pid(files) is None:
            raise InvalidStateTransition(f"sandbox {sandbox_id} is not running")
        try:
            async with await QmpClient.connect(files.qmp, timeout=10) as qmp:
                for command in commands:
                    await qmp.execute(command)
        except (OSError, TimeoutError, QmpClosed, QmpError) as exc:
            raise RuntimeFailure(f"QMP {' '.join(commands)} on {sandbox_id}: {exc}") from exc
        return files

    async def pause(self, sandbox_id: str) -> None:
        async with self._locked(sandbox_id):
            await self._qmp_verb(sandbox_id, "stop")

    async def resume(self, sandbox_id: str) -> None:
        async with self._locked(sandbox_id):
            files = await self._qmp_verb(sandbox_id, "cont")
            with contextlib.suppress(RuntimeFailure):  # the guest clock stood still
                await guest.set_clock(files.control, timeout=CONTROL_TIMEOUT)

    # -- snapshots ------------------------------------------------------------------
    async def snapshot(self, sandbox_id: str, dest: Path, *, memory: bool = True) -> None:
        """Save memory, device state and disk of a running sandbox into ``dest``
        (a new or empty directory); the sandbox keeps running.

        Always with memory (the disk is a qcow2 overlay, not a file layer;
        ``spec.layers`` is ignored): ``memory=False`` raises InvalidRequest."""
        if not memory:
            raise InvalidRequest("qemu snapshots always include memory (memory=False)")
        files = self.files(sandbox_id)
        dest = Path(os.path.abspath(dest))
        async with self._locked(sandbox_id):
            if self._pid(files) is None:
                raise InvalidStateTransition(f"sandbox {sandbox_id} is not running")
            boot = read_json(files.boot)
            if not boot.get("memory_shared"):
                raise InvalidStateTransition(
                    f"sandbox {sandbox_id} runs from a snapshot's memory (copy-on-write); "
                    "stop and start it to snapshot it again"
                )
            if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
                raise Conflict(f"snapshot destination {dest} exists and is not empty")
            spec = self.load_spec(files)
            if net.networked(spec.network):
                raise InvalidRequest(_no_memory_state("a memory snapshot", spec))
            meta = {
                "source": sandbox_id,
                "template": spec.template,
                "hostname": spec.hostname,
                "vcpus": spec.vcpus,
                "memory_mib": spec.memory_mib,
                "disk_mib": spec.disk_mib,
                **{k: boot.get(k) for k in ("accel", "cpu", "qemu_version", "kernel")},
                **{k: boot.get(k) for k in ("initramfs", "append", "kernel_version")},
            }
            chain = layers_from_json(read_json(files.disk_meta).get("chain"))
            await snapshots.take(files, dest, chain=chain, meta=meta)

    # -- hibernate / wake (hibernate.py) ------------------------------------------------
    async def hibernate(self, sandbox_id: str) -> None:
        """Save the VM's state beside its RAM file and quit QEMU (RAM freed)."""
        files = self.files(sandbox_id)
        self._require_available()
        async with self._locked(sandbox_id):
            pid = self._pid(files)
            if pid is None:
                if hibernate.is_hibernated(files):
                    return
                raise InvalidStateTransition(f"sandbox {sandbox_id} is not running")
            if files.complete():
                spec = self.load_spec(files)
                if net.networked(spec.network):
                    raise InvalidRequest(_no_memory_state("hibernate", spec))
            await hibernate.save(files)
            marker = str(files.qmp)
            with contextlib.suppress(QmpClosed, QmpError, OSError, TimeoutError):
                async with await QmpClient.connect(files.qmp, timeout=10) as qmp:
                    with contextlib.suppress(QmpClosed):
                        await qmp.execute("quit")
            if not await wait_gone(pid, marker, timeout=15):
                await kill_and_wait(pid, marker)
            for path in (files.qmp, files.control, files.agent_socket, files.pidfile):
                path.unlink(missing_ok=True)  # the RAM file stays: it is the image
            VmCgroup(sandbox_id).remove()

    async def wake(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        accel = self._require_available()
        async with self._locked(sandbox_id):
            if self._pid(files) is not None:
                return
            if not hibernate.is_hibernated(files):
                raise InvalidStateTransition(f"sandbox {sandbox_id} is not hibernated")
            await self._wake(files, accel)

    async def _wake(self, files: SandboxFiles, accel: AccelChoice) -> None:
        spec = files.load_spec()
        chain = layers_from_json(read_json(files.disk_meta).get("chain"))
        disks = (*chain, DiskLayer(files.overlay, "qcow2", writable=True))
        await self._launcher(spec, files, accel, disks).wake(hibernate.load_meta(files))
        hibernate.discard(files)

    # -- destroy / state / list ---------------------------------------------------------
    async def destroy(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            await self._teardown(files)

    async def _teardown(self, files: SandboxFiles) -> None:
        marker = str(files.qmp)
        pids = set(find_processes(marker))
        pid = read_pid(files.pidfile)
        if pid is not None and is_alive(pid, marker):
            pids.add(pid)
        for each in pids:
            await kill_and_wait(each, marker)
        group = VmCgroup(files.base.name)
        for _ in range(50):
            if not group.remove():
                break
            await asyncio.sleep(0.05)  # the killed process leaves its cgroup a bit later
        await self.network.teardown(files.base.name)  # after QEMU: it holds the tap
        if files.base.exists():
            await asyncio.to_thread(shutil.rmtree, files.base)

    async def state(self, sandbox_id: str) -> RuntimeState:
        files = self.files(sandbox_id)
        if self._pid(files) is not None:
            lock = self._locks.get(sandbox_id)
            if lock is not None and lock.locked():
                return RuntimeState.RUNNING  # a verb is at work; QMP is busy
            try:
                async with await QmpClient.connect(files.qmp, timeout=5) as qmp:
                    status = (await qmp.execute("query-status")).get("status")
            except (OSError, TimeoutError, QmpClosed, QmpError):
                return RuntimeState.RUNNING
            return _STATES.get(str(status), RuntimeState.PAUSED)
        if not files.complete():
            return RuntimeState.ABSENT
        if hibernate.is_hibernated(files):
            return RuntimeState.HIBERNATED
        return RuntimeState.STOPPED if files.started.exists() else RuntimeState.CREATED

    async def list_ids(self) -> list[str]:
        ids: set[str] = set()
        if self.root.is_dir():
            for entry in self.root.iterdir():
                with contextlib.suppress(InvalidRequest):
                    if entry.is_dir():
                        ids.add(check_id(entry.name))
        ids.update(self.network.sandbox_ids())  # a network left by a crash
        pattern = re.compile(re.escape(str(self.root)) + r"/([^/,]+)/qmp\.sock")
        for pid in find_processes(str(self.root) + "/"):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                for match in pattern.finditer(cmdline):
                    with contextlib.suppress(InvalidRequest):
                        ids.add(check_id(match.group(1)))
        return sorted(ids)


def _no_memory_state(what: str, spec: SandboxSpec) -> str:
    mode = spec.network.mode if spec.network is not None else "none"
    return (
        f"{what} is not supported for sandboxes with a network (mode {mode!r}) on "
        "QEMU: the guest would come back with the snapshot's address, outside its "
        "namespace; use network mode 'none' or stop and start the sandbox"
    )
