"""The firecracker runtime: each sandbox is one Firecracker microVM.

create                 sandbox dir; the disk: a copy-on-write copy of the
                       template's raw ext4 image, grown to disk_mib
create_from_snapshot   the same, from a snapshot's disk, plus its memory and
                       VM state to load on first start
start                  spawn firecracker (under the jailer when there is one),
                       then over its API: logger, metrics, and either
                       machine-config, boot-source, drive, vsock, balloon +
                       InstanceStart, or snapshot/load (resumed)
pause / resume         PATCH /vm
snapshot               pause, snapshot/create (Full), copy the disk, resume
stop                   Ctrl-Alt-Del (the guest reboots; with ``reboot=k``
                       Firecracker exits), SIGKILL after a timeout
destroy                stop hard, remove the sandbox dir and its jail

The agent listens on guest vsock port :data:`.vsock.AGENT_PORT`; the host
reaches it through ``agent_socket()`` (Firecracker's hybrid vsock socket) with
the ``CONNECT`` handshake: :meth:`FirecrackerRuntime.open_agent`.

Every verb but ``capabilities()``/``availability()`` raises
:class:`~atelier.errors.RuntimeUnavailable` (with the reason) before touching
anything when the host cannot run Firecracker: no binary, or no KVM that can
boot a standard guest. It is never replaced by another runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import shutil
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ... import hostinfo
from ...config import Settings
from ...errors import (
    AtelierError,
    Conflict,
    InvalidRequest,
    InvalidStateTransition,
    RuntimeFailure,
    RuntimeUnavailable,
    SandboxNotFound,
    TemplateNotFound,
)
from ..base import Capability, RuntimeAvailability, RuntimeState, SandboxSpec
from . import files as F
from . import snapshots, vmm
from .api import (
    FirecrackerApi,
    Logger,
    MemoryBackend,
    Metrics,
    RateLimiter,
    SnapshotCreate,
    SnapshotLoad,
    SnapshotType,
)
from .files import ProcessRecord, SandboxFiles, check_id
from .host import (
    FirecrackerOptions,
    GuestBoot,
    Probe,
    default_guest_boot,
    probe,
    template_disk,
)
from .jailer import JailerConfig, jail_id
from .vsock import AGENT_PORT, open_connection

__all__ = ["FirecrackerRuntime"]

_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
_STATES = {"Running": RuntimeState.RUNNING, "Paused": RuntimeState.PAUSED}
_SNAP_STATE, _SNAP_MEM = "snapshot.vmstate", "snapshot.mem"
_CGROUP_ROOT = Path("/sys/fs/cgroup")


class FirecrackerRuntime:
    """Sandboxes as Firecracker microVMs on this host."""

    name = "firecracker"

    def __init__(
        self,
        settings: Settings,
        *,
        options: FirecrackerOptions | None = None,
        kvm_status: Callable[[], tuple[bool, str]] = hostinfo.kvm_status,
        guest_boot: Callable[[], GuestBoot | None] | None = None,
        base_disk: Callable[[SandboxSpec], Path] = template_disk,
        disk_rate_limiter: RateLimiter | None = None,
        balloon_stats_interval_s: int = 0,
    ) -> None:
        """``guest_boot`` returns the kernel (and initramfs) to boot (default:
        :func:`.host.default_guest_boot`); ``base_disk`` maps a spec to its
        template's raw ext4 image (default: :func:`.host.template_disk`);
        ``kvm_status`` is :func:`atelier.hostinfo.kvm_status` (tests inject one)."""
        self.settings = settings
        self.options = options if options is not None else FirecrackerOptions.from_env()
        self._kvm_status = kvm_status
        self._guest_boot = guest_boot
        self.base_disk = base_disk
        self.devices = vmm.Devices(disk_rate_limiter, balloon_stats_interval_s)
        self.cgroup_root = _CGROUP_ROOT
        self._probe: Probe | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- paths ----------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(os.path.abspath(self.settings.data_dir)) / "firecracker"

    @property
    def sandboxes_dir(self) -> Path:
        return self.root / "sandboxes"

    def files(self, sandbox_id: str) -> SandboxFiles:
        return SandboxFiles(self.sandboxes_dir / check_id(sandbox_id))

    def workdir(self, sandbox_id: str) -> Path:
        """Firecracker's working directory (its ``/`` when jailed): where the
        relative paths sent to its API, and its sockets, are."""
        files = self.files(sandbox_id)
        fixed = files.workdir()
        if fixed is not None:
            return fixed
        jailer = self._jailer()
        return files.base if jailer is None else jailer.chroot_root(jail_id(sandbox_id))

    def agent_socket(self, sandbox_id: str) -> Path:
        """Firecracker's hybrid vsock socket: connect, then ``CONNECT <port>``
        (:meth:`open_agent` does both)."""
        self._require()
        return self.workdir(sandbox_id) / F.VSOCK_SOCK

    def api_socket(self, sandbox_id: str) -> Path:
        self._require()
        return self.workdir(sandbox_id) / F.API_SOCK

    def log_path(self, sandbox_id: str) -> Path:
        """The serial console (guest kernel and init output) and Firecracker's stderr."""
        self._require()
        return self.files(sandbox_id).console

    async def open_agent(
        self, sandbox_id: str, *, timeout: float = 5.0, limit: int = 2**16
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream to the sandbox's agent (guest vsock port ``AGENT_PORT``).
        Raises ``VsockHandshakeError`` (an ``OSError``) while it is not listening."""
        return await open_connection(
            self.agent_socket(sandbox_id), AGENT_PORT, timeout=timeout, limit=limit
        )

    # -- capabilities / availability -----------------------------------------------
    async def aclose(self) -> None:
        """Nothing runs in the background."""

    def info(self, sandbox_id: str) -> dict[str, Any]:
        return {"vmm": "firecracker", "accel": "kvm"}

    def capabilities(self) -> Capability:
        return Capability.PAUSE | Capability.MEMORY_SNAPSHOT | Capability.PERSISTENT_DISK

    def availability(self) -> RuntimeAvailability:
        found = self._probed()
        return RuntimeAvailability(self.name, found.available, found.reason)

    def _probed(self) -> Probe:
        if self._probe is None:
            self._probe = probe(self.options, self._kvm_status)
        return self._probe

    def _require(self) -> Probe:
        found = self._probed()
        if not found.available:
            raise RuntimeUnavailable(f"firecracker runtime cannot run here: {found.reason}")
        return found

    def _jailer(self) -> JailerConfig | None:
        found = self._require()
        if found.jailer is None or found.binary is None:
            return None
        return JailerConfig(
            jailer=found.jailer,
            exec_file=found.binary,
            chroot_base=self.root / "jail",
            uid=self.options.jail_uid,
            gid=self.options.jail_gid,
            cgroup_version=2 if hostinfo.cgroup_version() == "v2" else 1,
        )

    def _boot(self) -> GuestBoot:
        boot = (
            self._guest_boot()
            if self._guest_boot is not None
            else default_guest_boot(self.settings, self.options)
        )
        if boot is None:
            raise RuntimeFailure(
                "no guest kernel for firecracker: set ATELIER_FIRECRACKER_KERNEL to an "
                f"uncompressed vmlinux or extract one into {self.settings.data_dir / 'kernels'}"
            )
        for path in (boot.kernel, boot.initrd):
            if path is not None and not path.is_file():
                raise RuntimeFailure(f"guest boot file {path} does not exist")
        return boot

    @contextlib.asynccontextmanager
    async def _locked(self, sandbox_id: str) -> AsyncIterator[None]:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[sandbox_id] = lock
        async with lock:
            yield

    # -- create ---------------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> None:
        self._require()
        files = self.files(spec.sandbox_id)
        self._validate(spec)
        self._boot()
        base = self.base_disk(spec)
        if not base.is_file():
            raise TemplateNotFound(
                f"template {spec.template!r} has no raw disk image for firecracker ({base})"
            )

        async def build() -> None:
            await F.copy_file(base, files.disk)
            await F.grow_disk(files.disk, spec.disk_mib)

        await self._create(spec, files, build, restore=None)

    async def create_from_snapshot(self, spec: SandboxSpec, snapshot: Path) -> None:
        """Prepare a sandbox that resumes ``snapshot`` (a directory made by
        :meth:`snapshot`) on its first ``start``. vcpus, memory and disk size
        must be the snapshot's; later starts boot its disk afresh."""
        self._require()
        files = self.files(spec.sandbox_id)
        self._validate(spec)
        snapshot = Path(os.path.abspath(snapshot))
        manifest = snapshots.SnapshotManifest.read(snapshot)
        wanted = (manifest.vcpus, manifest.memory_mib, manifest.disk_mib)
        if (spec.vcpus, spec.memory_mib, spec.disk_mib) != wanted:
            raise InvalidRequest(
                f"snapshot {snapshot} is of a VM with vcpus={wanted[0]}, memory_mib={wanted[1]}, "
                f"disk_mib={wanted[2]}; the sandbox must have the same",
                details={"snapshot": str(snapshot)},
            )

        async def build() -> None:
            await F.copy_file(snapshot / snapshots.DISK, files.disk)
            vmm.link_or_copy(snapshot / snapshots.MEMORY, files.base / F.RESTORE_MEM)
            shutil.copyfile(snapshot / snapshots.VMSTATE, files.base / F.RESTORE_STATE)
            F.write_json(files.restore, {"snapshot": str(snapshot)})

        await self._create(spec, files, build, restore=snapshot)

    async def _create(
        self,
        spec: SandboxSpec,
        files: SandboxFiles,
        build: Callable[[], Awaitable[None]],
        restore: Path | None,
    ) -> None:
        jailer = self._jailer()
        jid = jail_id(spec.sandbox_id)
        workdir = files.base if jailer is None else jailer.chroot_root(jid)
        async with self._locked(spec.sandbox_id):
            if files.complete():
                if files.load_spec() == spec and self._restore_source(files) == restore:
                    return  # already created with this very spec
                raise Conflict(f"sandbox {spec.sandbox_id} already exists with another spec")
            if files.base.exists():
                await self._teardown(spec.sandbox_id, files)  # leftovers of a crash
            self.sandboxes_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                files.base.mkdir(mode=0o700)
                files.save_vm(workdir, jailed=jailer is not None, snapshot=restore)
                await build()
                files.save_spec(spec)  # last: marks the sandbox as complete
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self._teardown(spec.sandbox_id, files)
                if isinstance(exc, Exception) and not isinstance(exc, AtelierError):
                    raise RuntimeFailure(f"cannot create sandbox {spec.sandbox_id}: {exc}") from exc
                raise

    def _restore_source(self, files: SandboxFiles) -> Path | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            source = F.read_json(files.vm).get("snapshot")
            return Path(source) if source else None
        return None

    def _validate(self, spec: SandboxSpec) -> None:
        s = self.settings
        max_vcpus = min(32, s.max_vcpus)
        if not 1 <= spec.vcpus <= max_vcpus:
            raise InvalidRequest(f"vcpus must be 1..{max_vcpus}, not {spec.vcpus}")
        if not 64 <= spec.memory_mib <= s.max_memory_mib:
            raise InvalidRequest(f"memory_mib must be 64..{s.max_memory_mib}")
        if not 64 <= spec.disk_mib <= s.max_disk_mib:
            raise InvalidRequest(f"disk_mib must be 64..{s.max_disk_mib}")
        if not _HOSTNAME.fullmatch(spec.hostname):
            raise InvalidRequest("hostname must be 1..63 of letters, digits, '.', '-'")
        if not spec.rootfs.is_absolute():
            raise InvalidRequest(f"template path {spec.rootfs} is not absolute")
        sock = self.workdir(spec.sandbox_id) / F.VSOCK_SOCK
        if len(os.fsencode(sock)) > F.MAX_UNIX_PATH:
            raise InvalidRequest(
                f"sandbox id too long for this data dir: {sock} exceeds the "
                f"{F.MAX_UNIX_PATH}-byte unix socket path limit"
            )

    # -- start ----------------------------------------------------------------------
    async def start(self, sandbox_id: str) -> None:
        self._require()
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            if not files.complete():
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist on this host")
            spec = files.load_spec()
            record = files.load_process()
            if record is not None and record.alive():
                state = await self._vm_state(sandbox_id, record)
                if state in (RuntimeState.RUNNING, RuntimeState.PAUSED):
                    return
                await F.kill_and_wait(record)  # an interrupted start (or exiting)
            restoring = files.restore.exists()
            boot = None if restoring else self._boot()
            await self._cleanup_run(sandbox_id, files)
            try:
                await self._launch(spec, files, boot)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self._stop(sandbox_id, files, graceful=False)
                if isinstance(exc, AtelierError) and not isinstance(exc, RuntimeFailure):
                    raise
                if not isinstance(exc, Exception):
                    raise
                tail = F.read_tail(files.console)
                what = exc.message if isinstance(exc, RuntimeFailure) else repr(exc)
                details = dict(exc.details) if isinstance(exc, RuntimeFailure) else {}
                details["console"] = tail
                raise RuntimeFailure(
                    f"cannot start sandbox {sandbox_id}: {what}"
                    + (f"; console: {tail[-600:]}" if tail else ""),
                    details=details,
                ) from exc
            files.started.write_text(F.boot_id())
            if restoring:
                files.restore.unlink()
                for name in (F.RESTORE_STATE, F.RESTORE_MEM):
                    (files.base / name).unlink(missing_ok=True)

    async def _launch(self, spec: SandboxSpec, files: SandboxFiles, boot: GuestBoot | None) -> None:
        jailer = self._jailer() if files.jailed() else None
        if files.jailed() and jailer is None:
            raise RuntimeUnavailable(
                f"sandbox {spec.sandbox_id} was created to run jailed, and there is no jailer now"
            )
        jid = jail_id(spec.sandbox_id)
        binary = self._require().binary
        assert binary is not None
        workdir = vmm.prepare_workdir(files, jailer, jid, boot)
        record = vmm.spawn(vmm.firecracker_argv(binary, jailer, jid, spec, workdir), workdir, files)
        async with FirecrackerApi(workdir / F.API_SOCK) as api:
            await vmm.wait_api(api, record)
            await api.put_logger(Logger(log_path=F.LOG))
            await api.put_metrics(Metrics(metrics_path=F.METRICS))
            if boot is None:
                load = SnapshotLoad(
                    snapshot_path=F.RESTORE_STATE,
                    mem_backend=MemoryBackend(backend_path=F.RESTORE_MEM),
                    resume_vm=True,
                )
                await api.load_snapshot(load)
                return
            await vmm.configure(api, spec, boot, self.devices, jailed=jailer is not None)
            await api.instance_start()

    # -- stop / destroy ------------------------------------------------------------
    async def stop(self, sandbox_id: str) -> None:
        self._require()
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            await self._stop(sandbox_id, files, graceful=True)

    async def _stop(self, sandbox_id: str, files: SandboxFiles, *, graceful: bool) -> None:
        record = files.load_process()
        if record is not None and record.alive():
            if graceful and platform.machine() in ("x86_64", "AMD64"):
                await self._shutdown(sandbox_id, record)
            await F.kill_and_wait(record)
        await self._cleanup_run(sandbox_id, files)

    async def _shutdown(self, sandbox_id: str, record: ProcessRecord) -> None:
        """Ask the guest to reboot (Ctrl-Alt-Del); with ``reboot=k`` on its
        command line Firecracker then exits. Best effort: SIGKILL follows."""
        try:
            async with FirecrackerApi(self.api_socket(sandbox_id), timeout=2) as api:
                info = await api.describe_instance()
                if info.state == "Paused":
                    await api.resume()
                elif info.state != "Running":
                    return
                await api.send_ctrl_alt_del()
        except RuntimeFailure:
            return
        await F.wait_gone(record, self.options.shutdown_timeout)

    async def _cleanup_run(self, sandbox_id: str, files: SandboxFiles) -> None:
        """Remove what one run leaves: pid file, sockets, the chroot, cgroups."""
        files.pid.unlink(missing_ok=True)
        for name in (F.API_SOCK, F.VSOCK_SOCK, _SNAP_STATE, _SNAP_MEM):
            (files.base / name).unlink(missing_ok=True)
        workdir = files.workdir()
        if files.jailed() and workdir is not None:
            chroot = workdir.parent  # <chroot base>/<exec file name>/<jail id>
            if chroot.exists():
                await asyncio.to_thread(shutil.rmtree, chroot)
            jailer = self._jailer()
            if jailer is not None:
                self._remove_cgroups(jailer, jail_id(sandbox_id))

    def _remove_cgroups(self, jailer: JailerConfig, jid: str) -> None:
        rel = Path(jailer.cgroup_parent().strip("/")) / jid
        dirs = [self.cgroup_root / rel]
        with contextlib.suppress(OSError):
            dirs += [c / rel for c in self.cgroup_root.iterdir()]
        for path in dirs:
            with contextlib.suppress(OSError):
                path.rmdir()

    async def destroy(self, sandbox_id: str) -> None:
        self._require()
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            await self._teardown(sandbox_id, files)

    async def _teardown(self, sandbox_id: str, files: SandboxFiles) -> None:
        await self._stop(sandbox_id, files, graceful=False)
        if files.base.exists():
            await asyncio.to_thread(shutil.rmtree, files.base)

    # -- pause / resume / state ----------------------------------------------------
    async def pause(self, sandbox_id: str) -> None:
        self._require()
        async with self._locked(sandbox_id):
            if await self._running_state(sandbox_id) == RuntimeState.RUNNING:
                async with self._api(sandbox_id) as api:
                    await api.pause()

    async def resume(self, sandbox_id: str) -> None:
        self._require()
        async with self._locked(sandbox_id):
            if await self._running_state(sandbox_id) == RuntimeState.PAUSED:
                async with self._api(sandbox_id) as api:
                    await api.resume()

    def _api(self, sandbox_id: str) -> FirecrackerApi:
        return FirecrackerApi(self.api_socket(sandbox_id))

    async def _running_state(self, sandbox_id: str) -> RuntimeState:
        record = self.files(sandbox_id).load_process()
        state = await self._vm_state(sandbox_id, record) if record and record.alive() else None
        if state not in (RuntimeState.RUNNING, RuntimeState.PAUSED):
            raise InvalidStateTransition(f"sandbox {sandbox_id} is not running")
        assert state is not None
        return state

    async def _vm_state(self, sandbox_id: str, record: ProcessRecord) -> RuntimeState | None:
        """RUNNING/PAUSED from the live VMM ``record``; None if its VM has not
        started, or the VMM turns out to be exiting (its API already gone)."""
        try:
            async with self._api(sandbox_id) as api:
                info = await api.describe_instance()
        except RuntimeFailure:
            if await F.wait_gone(record, 0.5):
                return None
            raise
        return _STATES.get(info.state)

    async def state(self, sandbox_id: str) -> RuntimeState:
        """RUNNING/PAUSED from Firecracker; without a live VMM, STOPPED if it
        ever ran, CREATED if not, ABSENT if there is no complete sandbox."""
        self._require()
        files = self.files(sandbox_id)
        if not files.complete():
            return RuntimeState.ABSENT
        record = files.load_process()
        if record is not None and record.alive():
            state = await self._vm_state(sandbox_id, record)
            if state is not None:
                return state
        return RuntimeState.STOPPED if files.started.exists() else RuntimeState.CREATED

    async def list_ids(self) -> list[str]:
        self._require()
        if not self.sandboxes_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.sandboxes_dir.iterdir()
            if entry.is_dir() and F.ID_PATTERN.fullmatch(entry.name)
        )

    # -- snapshots ------------------------------------------------------------------
    async def hibernate(self, sandbox_id: str) -> None:
        raise RuntimeUnavailable("the firecracker runtime cannot hibernate sandboxes")

    async def wake(self, sandbox_id: str) -> None:
        raise RuntimeUnavailable("the firecracker runtime cannot hibernate sandboxes")

    async def snapshot(self, sandbox_id: str, dest: Path, *, memory: bool = True) -> None:
        """Save the running (or paused) sandbox's memory, VM state and disk
        into the new directory ``dest``; the sandbox goes on as it was.

        Always with memory (the disk is a whole image, not an overlay layer;
        ``spec.layers`` is ignored): ``memory=False`` raises InvalidRequest."""
        if not memory:
            raise InvalidRequest("firecracker snapshots always include memory (memory=False)")
        found = self._require()
        files = self.files(sandbox_id)
        dest = Path(os.path.abspath(dest))
        async with self._locked(sandbox_id):
            if not files.complete():
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist on this host")
            spec = files.load_spec()
            state = await self._running_state(sandbox_id)
            try:
                if dest.is_dir() and not any(dest.iterdir()):
                    dest.rmdir()  # an empty directory from the caller is fine
                dest.mkdir(mode=0o700)
            except FileExistsError as exc:
                raise Conflict(f"snapshot destination {dest} already exists") from exc
            except OSError as exc:
                raise InvalidRequest(f"cannot create snapshot directory {dest}: {exc}") from exc
            try:
                await self._take_snapshot(sandbox_id, files, dest, resume=state)
                snapshots.SnapshotManifest(
                    source_sandbox=sandbox_id,
                    template=spec.template,
                    vcpus=spec.vcpus,
                    memory_mib=spec.memory_mib,
                    disk_mib=spec.disk_mib,
                    firecracker_version=found.version or "unknown",
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    agent_port=AGENT_PORT,
                ).write(dest)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    shutil.rmtree(dest)
                if isinstance(exc, Exception) and not isinstance(exc, AtelierError):
                    raise RuntimeFailure(f"cannot snapshot sandbox {sandbox_id}: {exc!r}") from exc
                raise

    async def _take_snapshot(
        self, sandbox_id: str, files: SandboxFiles, dest: Path, *, resume: RuntimeState
    ) -> None:
        workdir = self.workdir(sandbox_id)
        for name in (_SNAP_STATE, _SNAP_MEM):
            (workdir / name).unlink(missing_ok=True)
        async with self._api(sandbox_id) as api:
            if resume == RuntimeState.RUNNING:
                await api.pause()
            try:
                await api.create_snapshot(
                    SnapshotCreate(
                        snapshot_path=_SNAP_STATE,
                        mem_file_path=_SNAP_MEM,
                        snapshot_type=SnapshotType.FULL,
                    )
                )
                # the disk as of this instant: the guest is paused
                await F.copy_file(files.disk, dest / snapshots.DISK)
            finally:
                if resume == RuntimeState.RUNNING:
                    await api.resume()
        for src, name in ((_SNAP_STATE, snapshots.VMSTATE), (_SNAP_MEM, snapshots.MEMORY)):
            target = dest / name
            await asyncio.to_thread(shutil.move, workdir / src, target)
            if files.jailed():  # a jailed clone's VMM reads it through its group
                os.chown(target, 0, self.options.jail_gid)
                target.chmod(0o640)
            else:
                target.chmod(0o600)
        (dest / snapshots.DISK).chmod(0o600)
