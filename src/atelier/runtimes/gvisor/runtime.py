"""The gVisor runtime: each sandbox is one runsc container (id = sandbox id).

create   sandbox dir, sparse ext4 disk, loop mount, overlay, OCI bundle
start    (re)mount if needed, ``runsc create`` + ``runsc start``
stop     ``runsc kill KILL``, wait until stopped, ``runsc delete``, unmount
destroy  stop, unmount, detach the loop device, remove the dir
hibernate/wake, snapshot, create_from_snapshot: ``runsc checkpoint``/``restore``
         and file layers, see hibernate.py and checkpoint.py

A sandbox whose spec has a network policy other than ``none`` also gets a
network namespace, veth pair and nftables rules (``atelier.network``), made
before every ``runsc create`` (runsc strips the namespace's addresses when it
takes the interface over, so they are re-added each start) and removed by
``destroy``. The policy is saved beside the spec (``network.json``).

See files.py for the layout of a sandbox directory and layers.py for the disk.

Trust: everything under ``<dir>/run/`` (and the disk layer) is written by the
sandbox, which is root inside and may plant symlinks there. Host code opens
such files with ``O_NOFOLLOW`` and checks that ``agent.sock`` is a socket
(``lstat``) before connecting. ``log_path`` is the console log, which only
runsc writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ...agent import bootstrap
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
from ...images.agent_runtime import ensure_agent_runtime
from ...network import NetworkManager, NetworkPolicy
from ..base import Capability, RuntimeAvailability, RuntimeState, SandboxSpec
from ..common import boot_id as _boot_id
from . import checkpoint, freezer, layers, oci
from . import hibernate as hib
from .files import SandboxFiles, check_id, read_tail
from .platform import detect_platform
from .proc import CommandResult, kill_processes, processes_with_arg
from .runsc import ContainerState, Runsc, console_open, sandbox_id_of

__all__ = ["GVisorRuntime"]

_STATES = {
    "created": RuntimeState.CREATED,
    "running": RuntimeState.RUNNING,
    "paused": RuntimeState.PAUSED,
    "stopped": RuntimeState.STOPPED,
}
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_HOST_TOOLS = ("mkfs.ext4", "mount", "umount", "losetup")
_NETWORK_TOOLS = ("ip", "nft", "unshare", "nsenter")  # iproute2, nftables, util-linux
_NETWORK_FILE = "network.json"  # the spec's network policy, beside spec.json


class GVisorRuntime:
    """Sandboxes as runsc (gVisor) containers on this host."""

    name = "gvisor"

    def __init__(
        self,
        settings: Settings,
        *,
        init_argv: Sequence[str] | None = None,
        state_dir: Path | None = None,
        network: NetworkManager | None = None,
    ) -> None:
        """``init_argv`` replaces the agent as the sandbox's init (tests and
        benchmarks only); by default the agent runs on the bundled interpreter
        (``images.agent_runtime``, mounted at ``bootstrap.RUNTIME_MOUNT``).

        ``state_dir`` keeps this runtime's sandboxes (``<state_dir>/sandboxes``)
        and runsc state (``<state_dir>/runsc``) apart from the server's, so
        its sandboxes are invisible to the server's reconciler (template
        builds use ``<data_dir>/builds``). Default: the settings' dirs.
        ``network``: the host's NetworkManager, shared with the QEMU runtime
        (one DNS forwarder, one lock per sandbox); default: its own."""
        self.settings = settings
        self.state_dir = Path(os.path.abspath(state_dir)) if state_dir is not None else None
        self.init_argv = list(init_argv) if init_argv is not None else None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._availability: RuntimeAvailability | None = None
        self._runsc: Runsc | None = None
        self._network: NetworkManager | None = network

    # -- paths ----------------------------------------------------------------
    @property
    def sandboxes_dir(self) -> Path:
        # resolved: mount points are compared with /proc/self/mountinfo paths
        if self.state_dir is not None:
            return (self.state_dir / "sandboxes").resolve()
        return Path(self.settings.sandboxes_dir).resolve()

    @property
    def runsc_root(self) -> Path:
        if self.state_dir is not None:
            return (self.state_dir / "runsc").resolve()
        return Path(self.settings.runsc_root).resolve()

    def files(self, sandbox_id: str) -> SandboxFiles:
        return SandboxFiles(self.sandboxes_dir / check_id(sandbox_id))

    def agent_socket(self, sandbox_id: str) -> Path:
        return self.files(sandbox_id).agent_socket

    def log_path(self, sandbox_id: str) -> Path:
        return self.files(sandbox_id).console

    # -- capabilities / availability -----------------------------------------------
    async def aclose(self) -> None:
        """Stop the runtime's background work (the network's domain refresher);
        sandboxes keep running."""
        if self._network is not None:
            await self._network.aclose()

    def capabilities(self) -> Capability:
        return (
            Capability.PAUSE
            | Capability.PERSISTENT_DISK
            | Capability.NETWORK
            | Capability.HIBERNATE
            | Capability.MEMORY_SNAPSHOT
        )

    def availability(self) -> RuntimeAvailability:
        if self._availability is None:
            self._availability = self._probe()
        return self._availability

    def _probe(self) -> RuntimeAvailability:
        def no(reason: str) -> RuntimeAvailability:
            return RuntimeAvailability(self.name, False, reason)

        if os.geteuid() != 0:
            return no(f"runsc, loop devices and mounts need root (running as uid {os.geteuid()})")
        binary = shutil.which(self.settings.runsc_bin)
        if binary is None:
            return no(f"runsc binary {self.settings.runsc_bin!r} not found (install gVisor)")
        missing = [tool for tool in _HOST_TOOLS if shutil.which(tool) is None]
        if missing:
            return no(f"missing host tools: {', '.join(missing)} (e2fsprogs, util-linux)")
        try:
            filesystems = Path("/proc/filesystems").read_text()
        except OSError:
            filesystems = ""
        if "overlay" not in filesystems.split():
            return no("the kernel has no overlayfs (modprobe overlay)")
        try:
            out = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
            version = (out.stdout.splitlines() or ["runsc (unknown version)"])[0].strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return no(f"cannot run {binary} --version: {exc}")
        choice = detect_platform(self.settings.runsc_bin, self.settings.runsc_platform)
        if not choice.usable:
            return no(choice.reason)
        return RuntimeAvailability(
            self.name, True, f"{version}, platform {choice.name} ({choice.reason})"
        )

    @property
    def runsc(self) -> Runsc:
        if self._runsc is None:
            status = self.availability()
            if not status.available:
                raise RuntimeUnavailable(f"gvisor runtime cannot run here: {status.reason}")
            choice = detect_platform(self.settings.runsc_bin, self.settings.runsc_platform)
            self._runsc = Runsc(
                self.settings.runsc_bin,
                self.runsc_root,
                choice.name,
                default_log=(self.state_dir or Path(os.path.abspath(self.settings.data_dir)))
                / "runsc.log",
            )
        return self._runsc

    @property
    def network(self) -> NetworkManager:
        """Sandbox networks (state in ``<data_dir>/network``, or ``<state_dir>/network``)."""
        if self._network is None:
            self._network = NetworkManager(
                self.settings,
                state_dir=self.state_dir / "network" if self.state_dir is not None else None,
            )
        return self._network

    def info(self, sandbox_id: str) -> dict[str, Any]:
        choice = detect_platform(self.settings.runsc_bin, self.settings.runsc_platform)
        out: dict[str, Any] = {"platform": choice.name, "isolation": "gVisor user-space kernel"}
        net = self.network.info(sandbox_id)
        out["network"] = net.to_json() if net is not None else {"mode": "none"}
        return out

    def _load_spec(self, files: SandboxFiles) -> SandboxSpec:
        """The saved spec with its network policy (kept in its own file)."""
        spec = files.load_spec()
        path = files.base / _NETWORK_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return spec
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(f"cannot read {path}: {exc}") from exc
        try:
            policy = NetworkPolicy.from_json(data) if data is not None else None
        except InvalidRequest as exc:
            raise RuntimeFailure(f"corrupt {path}: {exc}") from exc
        return dataclasses.replace(spec, network=policy)

    def _save_network(self, files: SandboxFiles, spec: SandboxSpec) -> None:
        if spec.network is None:
            return
        path = files.base / _NETWORK_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec.network.to_json(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    def _prepare_host_dirs(self) -> None:
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.runsc_root.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def _current(self, files: SandboxFiles) -> ContainerState | None:
        """runsc's view of the sandbox's container (None: no container).

        After a host reboot runsc still has the state file of a container
        that was running, with a pid that may now belong to anything: forget
        it (asking runsc to delete it would kill that pid).
        """
        with contextlib.suppress(OSError):
            booted = files.started.read_text().strip()
            if booted and booted != _boot_id():
                self.runsc.forget(files.cid, stale=True)
                files.started.write_text(_boot_id())
        if freezer.is_frozen(files.base.name) and freezer.has_tasks(files.base.name):
            # paused through the freezer; runsc would hang asking the frozen sandbox
            return ContainerState(files.cid, "paused", 0, str(files.bundle))
        return await self.runsc.state(files.cid, log=self._log(files))

    def _log(self, files: SandboxFiles) -> Path | None:
        return files.runsc_log if files.base.is_dir() else None

    @contextlib.asynccontextmanager
    async def _locked(self, sandbox_id: str) -> AsyncIterator[None]:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[sandbox_id] = lock
        async with lock:
            yield

    # -- verbs ------------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> None:
        files = self.files(spec.sandbox_id)
        files.check_socket_path()
        _validate(spec, self.settings)
        _ = self.runsc  # RuntimeUnavailable before touching anything
        async with self._locked(spec.sandbox_id):
            if files.complete():
                if self._load_spec(files) == spec:
                    return  # already created with this very spec
                raise Conflict(f"sandbox {spec.sandbox_id} already exists with another spec")
            if files.base.exists() or await self._current(files) is not None:
                await self._teardown(spec.sandbox_id, files)  # leftovers of a crash
            self._prepare_host_dirs()
            try:
                await self._build(spec, files)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self._teardown(spec.sandbox_id, files)
                if isinstance(exc, Exception) and not isinstance(exc, AtelierError):
                    raise RuntimeFailure(f"cannot create sandbox {spec.sandbox_id}: {exc}") from exc
                raise

    async def _build(self, spec: SandboxSpec, files: SandboxFiles) -> None:
        files.base.mkdir(mode=0o700)
        files.run_dir.mkdir()
        files.bundle.mkdir()
        paths = files.layers
        await layers.create_disk(paths.disk, spec.disk_mib)
        await layers.ensure_mounted(paths, spec.rootfs, spec.layers)
        write_identity(paths.rootfs, spec.hostname)
        if spec.network is not None and spec.network.enabled:
            write_resolv_conf(paths.rootfs, self.network.resolv_conf())
        await self._write_bundle(spec, files)
        self._save_network(files, spec)
        files.save_spec(spec)  # last: marks the sandbox as complete

    async def _write_bundle(
        self, spec: SandboxSpec, files: SandboxFiles, netns: Path | None = None
    ) -> None:
        argv, runtime_dir = self.init_argv, None
        if argv is None:
            # The agent always runs on the bundled interpreter, never on the
            # image's Python (which may be missing or another version).
            runtime = await asyncio.to_thread(ensure_agent_runtime, self.settings)
            argv, runtime_dir = runtime.agent_argv(), runtime.path
        paths = oci.BundlePaths(
            rootfs=files.layers.rootfs,
            run_dir=files.run_dir,
            agent_dir=bootstrap.package_dir(),
            tmp_dir=files.layers.tmp,
            runtime_dir=runtime_dir,
        )
        oci.write_config(files.bundle, oci.build_config(spec, paths, argv, netns))

    async def start(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        runsc = self.runsc
        async with self._locked(sandbox_id):
            if not files.complete():
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist on this host")
            spec = self._load_spec(files)
            log = files.runsc_log
            current = await self._current(files)
            if current is not None and current.status in ("running", "paused"):
                if (files.run_dir / bootstrap.RELEASED_NAME).exists():
                    await checkpoint.retake_agent(runsc, files)  # a capture was cut short
                return
            if hib.is_hibernated(files):
                await hib.wake(self, files)  # never a cold boot: that would lose the memory
                return
            image = hib.pending_restore(files)
            if image is not None:
                await hib.restore_snapshot(self, files, image)
                return
            if current is not None:
                await runsc.delete(files.cid, force=True, log=log)
            await layers.ensure_mounted(files.layers, spec.rootfs, spec.layers)
            netns = None
            if spec.network is not None and spec.network.enabled:
                # (re)made before every start: runsc strips the namespace's addresses
                netns = (await self.network.setup(sandbox_id, spec.network)).netns_path
            await self._write_bundle(spec, files, netns)
            with contextlib.suppress(FileNotFoundError):
                files.agent_socket.unlink()  # a stale socket from the last run
            await self._runsc_start(sandbox_id, files, netns)
            files.started.write_text(_boot_id())

    async def _runsc_start(
        self, sandbox_id: str, files: SandboxFiles, netns: Path | None = None
    ) -> None:
        runsc, log = self.runsc, files.runsc_log
        network = "sandbox" if netns is not None else None
        try:
            with console_open(files.console) as console:
                for attempt in range(2):
                    offset = os.fstat(console.fileno()).st_size
                    res = await runsc.create(
                        files.cid, files.bundle, console=console, log=log, network=network
                    )
                    said = read_tail(files.console, offset)
                    if res.ok or attempt or "already exists" not in said:
                        break
                    # a container runsc's state hint missed (e.g. left by a crash)
                    await runsc.delete(files.cid, force=True, log=log)
            if not res.ok:
                detail = read_tail(files.console, offset) or read_tail(log) or "(no output)"
                raise RuntimeFailure(
                    f"runsc create {sandbox_id} failed (exit {res.returncode}): {detail}",
                    details={"console": str(files.console), "runsc_log": str(log)},
                )
            await runsc.start(files.cid, log=log, netns=netns)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._abort_start(sandbox_id, files)
            raise

    async def _abort_start(self, sandbox_id: str, files: SandboxFiles) -> None:
        """Undo a failed or interrupted ``runsc create``/``start``."""
        await self.runsc.delete(files.cid, force=True, log=self._log(files), check=False)
        await self._kill_strays(files)

    async def _kill_strays(self, files: SandboxFiles) -> None:
        # gofer/sandbox processes of a runsc create that died midway: runsc
        # has no record of them, yet they hold the disk's mounts
        strays = processes_with_arg(str(files.bundle))
        if strays:
            await kill_processes(strays)

    async def stop(self, sandbox_id: str) -> None:
        """Stop every process; a hibernated sandbox's image is discarded."""
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            await self._stop(sandbox_id, files)
            await layers.unmount_all(files.base)
            await asyncio.to_thread(hib.discard_image, files)

    # -- hibernate / snapshots (hibernate.py) ---------------------------------------
    async def hibernate(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            await hib.hibernate(self, files)

    async def wake(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            await hib.wake(self, files)

    async def snapshot(self, sandbox_id: str, dest: Path, *, memory: bool = True) -> None:
        """Capture the running sandbox into ``dest`` (see hibernate.py); with
        ``memory`` its processes too. It runs on afterwards."""
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            await hib.snapshot(self, files, dest, memory=memory)

    async def create_from_snapshot(self, spec: SandboxSpec, snapshot: Path) -> None:
        await hib.create_from_snapshot(self, spec, snapshot)

    async def _stop(self, sandbox_id: str, files: SandboxFiles) -> None:
        runsc, log = self.runsc, self._log(files)
        current = await self._current(files)
        if current is None:
            return
        if current.status == "paused":
            await self._unpause(files)
        if current.status in ("running", "paused"):
            # Killing init lets gVisor end every process (closing, so flushing,
            # their files) before the sandbox goes; delete --force would not.
            await runsc.kill(files.cid, "KILL", log=log, check=False)
            await self._wait_stopped(files.cid, log)
        res = await runsc.delete(files.cid, log=log, check=False)
        if not res.ok and await runsc.state(files.cid, log=log) is not None:
            await runsc.delete(files.cid, force=True, log=log)

    async def _wait_stopped(self, cid: str, log: Path | None, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            current = await self.runsc.state(cid, log=log)
            if current is None or current.status == "stopped":
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def pause(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            if self._freezer_live(files):  # fast path: no runsc call at all
                if freezer.is_frozen(sandbox_id):
                    return
                with contextlib.suppress(RuntimeFailure):  # stuck FREEZING: use runsc
                    await freezer.freeze(sandbox_id)
                    return
            current = await self._require(sandbox_id, files)
            if current.status == "paused":
                return
            await self.runsc.pause(files.cid, log=files.runsc_log)
            _runsc_paused(files).touch()

    async def resume(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            if self._freezer_live(files) and freezer.is_frozen(sandbox_id):
                await freezer.thaw(sandbox_id)
                return
            current = await self._require(sandbox_id, files)
            if current.status == "running":
                return
            await self._unpause(files)

    def _freezer_live(self, files: SandboxFiles) -> bool:
        """The sandbox has processes in its freezer cgroup and no runsc pause
        is in effect: pause/resume go through the freezer (see freezer.py)."""
        sid = files.base.name
        return (
            freezer.available(sid) and freezer.has_tasks(sid) and not _runsc_paused(files).exists()
        )

    async def _freeze(self, files: SandboxFiles) -> None:
        """Pause a running sandbox: the cgroup freezer, else runsc."""
        if freezer.available(files.base.name):
            with contextlib.suppress(RuntimeFailure):
                await freezer.freeze(files.base.name)
                return
        await self.runsc.pause(files.cid, log=files.runsc_log)
        _runsc_paused(files).touch()

    async def _unpause(self, files: SandboxFiles) -> None:
        """Undo either kind of pause."""
        if freezer.is_frozen(files.base.name):
            await freezer.thaw(files.base.name)
        current = await self.runsc.state(files.cid, log=files.runsc_log)
        if current is not None and current.status == "paused":
            await self.runsc.resume(files.cid, log=files.runsc_log)
        _runsc_paused(files).unlink(missing_ok=True)

    async def _require(self, sandbox_id: str, files: SandboxFiles) -> ContainerState:
        current = await self._current(files)
        if current is None or current.status not in ("running", "paused"):
            raise InvalidStateTransition(f"sandbox {sandbox_id} is not running")
        return current

    async def destroy(self, sandbox_id: str) -> None:
        files = self.files(sandbox_id)
        async with self._locked(sandbox_id):
            await self._teardown(sandbox_id, files)

    async def _teardown(self, sandbox_id: str, files: SandboxFiles) -> None:
        """Remove every trace of the sandbox, whatever state it is in."""
        runsc = self.runsc
        try:
            await self._stop(sandbox_id, files)
        except AtelierError:
            log = self._log(files)
            await runsc.delete(files.cid, force=True, log=log, check=False)
            if await runsc.state(files.cid, log=log) is not None:
                raise
        await self._kill_strays(files)
        await self.network.teardown(sandbox_id)
        await layers.unmount_all(files.base)
        await layers.detach_loops(files.layers.disk)
        runsc.forget(files.cid)
        paths = files.layers
        # never delete through a mount (the overlay shows the template's files)
        if layers.mounts_under(files.base) or any(
            os.path.ismount(p) for p in (paths.layer, paths.rootfs)
        ):
            raise RuntimeFailure(f"{files.base} still has mounts; not removing it")
        if files.base.exists():
            await asyncio.to_thread(shutil.rmtree, files.base)
        _remove_cgroups(oci.cgroups_path(sandbox_id))

    async def state(self, sandbox_id: str) -> RuntimeState:
        """RUNNING/PAUSED/STOPPED from runsc; without a runsc container,
        STOPPED if it ever ran, CREATED if not, ABSENT if there is no complete
        sandbox (a half-created one: ``create`` redoes it, ``destroy`` removes it)."""
        files = self.files(sandbox_id)
        current = await self._current(files)
        if (current is None or current.status == "stopped") and hib.is_hibernated(files):
            return RuntimeState.HIBERNATED
        if current is not None:
            return _STATES.get(current.status, RuntimeState.STOPPED)
        if not files.complete():
            return RuntimeState.ABSENT
        return RuntimeState.STOPPED if files.started.exists() else RuntimeState.CREATED

    async def list_ids(self) -> list[str]:
        ids = {sid for cid in self.runsc.container_ids() if (sid := sandbox_id_of(cid))}
        ids.update(self.network.sandbox_ids())  # a network left by a crash
        if self.sandboxes_dir.is_dir():
            for entry in self.sandboxes_dir.iterdir():
                with contextlib.suppress(InvalidRequest):
                    if entry.is_dir():
                        ids.add(check_id(entry.name))
        return sorted(ids)

    async def exec(
        self, sandbox_id: str, argv: Sequence[str], *, timeout: float = 60
    ) -> CommandResult:
        """Run a command inside a running sandbox with ``runsc exec`` (for
        tests and diagnostics; clients go through the agent)."""
        files = self.files(sandbox_id)
        return await self.runsc.exec(files.cid, argv, log=self._log(files), timeout=timeout)


def _validate(spec: SandboxSpec, settings: Settings) -> None:
    if spec.network is not None and spec.network.enabled:
        missing = [tool for tool in _NETWORK_TOOLS if shutil.which(tool) is None]
        if missing:
            raise RuntimeUnavailable(
                f"network mode {spec.network.mode!r} needs {', '.join(missing)} on the host "
                "(iproute2, nftables, util-linux)"
            )
    if not spec.rootfs.is_absolute() or not spec.rootfs.is_dir():
        raise InvalidRequest(f"template rootfs {spec.rootfs} is not an existing absolute dir")
    for layer in spec.layers:
        if not layer.is_absolute() or not layer.is_dir():
            raise InvalidRequest(f"file layer {layer} is not an existing absolute dir")
    if not 1 <= spec.vcpus <= settings.max_vcpus:
        raise InvalidRequest(f"vcpus must be 1..{settings.max_vcpus}, not {spec.vcpus}")
    if not 64 <= spec.memory_mib <= settings.max_memory_mib:
        raise InvalidRequest(f"memory_mib must be 64..{settings.max_memory_mib}")
    if not layers.MIN_DISK_MIB <= spec.disk_mib <= settings.max_disk_mib:
        raise InvalidRequest(f"disk_mib must be {layers.MIN_DISK_MIB}..{settings.max_disk_mib}")
    if not spec.hostname or len(spec.hostname) > 63:
        raise InvalidRequest("hostname must be 1..63 characters")


def _runsc_paused(files: SandboxFiles) -> Path:
    """Marker: this pause went through ``runsc pause`` (the freezer got stuck)."""
    return files.base / "paused-by-runsc"


def _remove_cgroups(path: str, root: Path = _CGROUP_ROOT) -> None:
    """Best effort: remove the sandbox's (empty) cgroups runsc left behind."""
    rel = path.strip("/")
    with contextlib.suppress(OSError):
        for controller in root.iterdir():
            with contextlib.suppress(OSError):
                (controller / rel).rmdir()


def write_resolv_conf(rootfs: Path, text: str) -> None:
    """Write the sandbox's ``/etc/resolv.conf`` (in its upper layer), never
    following a link from the template (same rules as :func:`write_identity`)."""
    _write_etc(rootfs, (("resolv.conf", text),))


def write_identity(rootfs: Path, hostname: str) -> None:
    """Give the sandbox its own ``/etc/hostname`` and ``/etc/hosts`` (in its upper layer).

    Runs before the sandbox first starts, so nothing inside can have replaced
    these paths with links; any link from the template is replaced, not followed.
    """
    hosts = (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
    _write_etc(rootfs, (("hostname", f"{hostname}\n"), ("hosts", hosts)))


def _write_etc(rootfs: Path, entries: Sequence[tuple[str, str]]) -> None:
    # Templates come from untrusted images: ``etc`` may be a symlink (to the
    # host's /etc, from the host's point of view). Never follow one: work
    # relative to a directory opened with O_NOFOLLOW, and create ``etc`` if the
    # image has none. With a symlinked ``etc`` the image keeps its own files.
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir("etc", 0o755, dir_fd=root_fd)
        try:
            etc_fd = os.open(
                "etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd
            )
        except OSError:
            return  # a symlink or not a directory
    finally:
        os.close(root_fd)
    try:
        for name, text in entries:
            try:
                os.unlink(name, dir_fd=etc_fd)  # a link from the template is replaced
            except FileNotFoundError:
                pass
            except OSError:
                continue  # a directory there: leave the image's choice alone
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=etc_fd,
            )
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
    finally:
        os.close(etc_fd)
