"""Small probes of the host Atelier runs on.

Each probe takes its inputs as parameters whose defaults read the real host,
so unit tests can hand it a fake ``/proc/cpuinfo`` or a missing ``/dev/kvm``.
None of them changes anything on the host.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "KVM_API_VERSION",
    "cgroup_version",
    "cpu_flags",
    "dir_writable",
    "is_root",
    "kvm_api_version",
    "kvm_status",
    "loop_devices_available",
    "overlayfs_supported",
    "systemd_running",
    "tool_version",
]

KVM_API_VERSION = 12  # the only version Linux has ever shipped
_KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO=0xAE, 0x00)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """CPU feature flags of the first processor listed (empty if unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def kvm_api_version(dev: Path = Path("/dev/kvm")) -> int:
    """``KVM_GET_API_VERSION`` of ``dev``; raises OSError when it cannot be opened or asked."""
    fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    finally:
        os.close(fd)


def kvm_status(
    dev: Path = Path("/dev/kvm"),
    sys_module: Path = Path("/sys/module"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    api_version: Callable[[Path], int] = kvm_api_version,
) -> tuple[bool, str]:
    """Whether KVM can boot a standard guest here, and a one-line reason.

    ``/dev/kvm`` existing is not enough: a nested "PVM" KVM (module
    ``kvm_pvm``, on a CPU that exposes no ``vmx``/``svm``) opens fine but
    can only run PVM-aware guest kernels.
    """
    if not dev.exists():
        return False, f"kvm: {dev} does not exist (no hardware virtualization or kvm not loaded)"
    try:
        version = api_version(dev)
    except PermissionError:
        return False, f"kvm: no permission to open {dev} (run as root or join the kvm group)"
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.ENOTTY:
            reason = "not a KVM device"
        return False, f"kvm: cannot use {dev}: {reason}"
    if version != KVM_API_VERSION:
        return False, f"kvm: {dev} speaks KVM API version {version}, expected {KVM_API_VERSION}"
    flags = cpu_flags(cpuinfo)
    hardware = "vmx" if "vmx" in flags else "svm" if "svm" in flags else None
    vendor_module = any((sys_module / m).exists() for m in ("kvm_intel", "kvm_amd"))
    if (sys_module / "kvm_pvm").exists() and (hardware is None or not vendor_module):
        return False, f"kvm: {dev} is a PVM host that cannot boot a standard guest"
    if hardware is None:
        return False, f"kvm: the CPU exposes no vmx/svm flag; {dev} cannot boot a standard guest"
    return True, f"kvm: {dev} usable ({hardware})"


def cgroup_version(mounts: Path = Path("/proc/self/mounts"), root: str = "/sys/fs/cgroup") -> str:
    """``"v2"`` (unified), ``"hybrid"`` (v1 controllers + v2 at ``unified``),
    ``"v1"`` or ``"none"``."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return "none"
    v1 = v2 = False
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point, fstype = parts[1], parts[2]
        if fstype == "cgroup2" and point == root:
            return "v2"
        if point.startswith(root + "/"):
            v1 = v1 or fstype == "cgroup"
            v2 = v2 or fstype == "cgroup2"
    if v1:
        return "hybrid" if v2 else "v1"
    return "v2" if v2 else "none"


def overlayfs_supported(
    filesystems: Path = Path("/proc/filesystems"),
    modules_dir: Path | None = None,
) -> bool:
    """Overlayfs is registered with the kernel, or its module can be loaded."""
    try:
        if any(line.split()[-1:] == ["overlay"] for line in filesystems.read_text().splitlines()):
            return True
    except OSError:
        pass
    if modules_dir is None:
        modules_dir = Path("/lib/modules") / os.uname().release
    return any(modules_dir.glob("kernel/fs/overlayfs/overlay.ko*"))


def loop_devices_available(
    control: Path = Path("/dev/loop-control"), dev: Path = Path("/dev")
) -> bool:
    """Loop devices can be had: the control device exists (or some ``/dev/loopN`` does)."""
    return control.exists() or any(dev.glob("loop[0-9]*"))


def tool_version(
    name: str,
    args: Sequence[str] = ("--version",),
    *,
    which: Callable[[str], str | None] = shutil.which,
    timeout: float = 10.0,
) -> str | None:
    """First non-empty output line of ``name args`` (e.g. ``"runsc version 0.0~20221219.0"``),
    or None if the tool is missing or fails."""
    path = which(name)
    if path is None:
        return None
    try:
        result = subprocess.run(
            [path, *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        if line.strip():
            return line.strip()
    return ""


def is_root(euid: Callable[[], int] = os.geteuid) -> bool:
    return euid() == 0


def systemd_running(
    run_dir: Path = Path("/run/systemd/system"),
    pid1_comm: Path = Path("/proc/1/comm"),
) -> bool:
    """systemd is PID 1 and has booted the system (what ``sd_booted()`` checks, plus PID 1)."""
    if not run_dir.is_dir():
        return False
    try:
        return pid1_comm.read_text().strip() == "systemd"
    except OSError:
        return False


def dir_writable(path: Path) -> tuple[bool, str]:
    """Whether Atelier can write in ``path`` (or create it), without leaving anything."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False, f"{path}: no existing parent"
        probe = probe.parent
    if not probe.is_dir():
        return False, f"{probe} exists and is not a directory"
    if probe != path:
        if os.access(probe, os.W_OK | os.X_OK):
            return True, f"{path} will be created"
        return False, f"cannot create {path}: {probe} is not writable"
    try:
        fd = os.open(path, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            ok = os.access(path, os.W_OK | os.X_OK)
            return ok, str(path) if ok else f"{path} is not writable"
        return False, f"{path} is not writable: {exc.strerror}"
    os.close(fd)
    return True, str(path)
