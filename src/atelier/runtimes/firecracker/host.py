"""Where the firecracker runtime finds its binaries, guest kernel and disks,
and whether it can run on this host.

Settings come from ``ATELIER_FIRECRACKER_*`` environment variables (read by
:meth:`FirecrackerOptions.from_env`) until they move into
:class:`atelier.config.Settings`:

=============================== ==============================================
``ATELIER_FIRECRACKER_BIN``     the firecracker binary (default: on ``PATH``)
``ATELIER_FIRECRACKER_JAILER``  the jailer (default: ``jailer`` next to the
                                binary); ``none`` runs Firecracker unjailed
``ATELIER_FIRECRACKER_UID/GID`` the jail's uid/gid (default 65534)
``ATELIER_FIRECRACKER_KERNEL``  the guest ``vmlinux`` (default: the newest
                                under ``<data_dir>/kernels/``)
``ATELIER_FIRECRACKER_INITRD``  the guest initramfs (default: none)
``ATELIER_FIRECRACKER_BOOT_ARGS`` extra kernel command line arguments
=============================== ==============================================
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...config import Settings
from ..base import SandboxSpec

__all__ = [
    "BIN_ENV",
    "DEFAULT_JAIL_ID",
    "FirecrackerOptions",
    "GuestBoot",
    "Probe",
    "default_guest_boot",
    "probe",
    "resolve_binary",
    "resolve_jailer",
    "template_disk",
]

BIN_ENV = "ATELIER_FIRECRACKER_BIN"
DEFAULT_JAIL_ID = 65534  # nobody / nogroup on Debian
DISK_NAME = "disk.ext4"  # the raw ext4 image of a template (built by images.diskimage)


@dataclass(frozen=True, slots=True)
class GuestBoot:
    """What the guest boots: an uncompressed ELF ``vmlinux`` and an optional initramfs."""

    kernel: Path
    initrd: Path | None = None
    extra_args: str = ""


@dataclass(frozen=True, slots=True)
class FirecrackerOptions:
    binary: str | None = None  # None: "firecracker" on PATH
    jailer: str | None = None  # None: "jailer" next to the binary; "none": never jail
    jail_uid: int = DEFAULT_JAIL_ID
    jail_gid: int = DEFAULT_JAIL_ID
    kernel: Path | None = None
    initrd: Path | None = None
    boot_args: str = ""
    shutdown_timeout: float = 10.0  # seconds between Ctrl-Alt-Del and SIGKILL

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FirecrackerOptions:
        e = os.environ if env is None else env

        def path(name: str) -> Path | None:
            value = e.get(name)
            return Path(value) if value else None

        def number(name: str, default: int) -> int:
            value = e.get(name)
            return int(value) if value else default

        return cls(
            binary=e.get(BIN_ENV) or None,
            jailer=e.get("ATELIER_FIRECRACKER_JAILER") or None,
            jail_uid=number("ATELIER_FIRECRACKER_UID", DEFAULT_JAIL_ID),
            jail_gid=number("ATELIER_FIRECRACKER_GID", DEFAULT_JAIL_ID),
            kernel=path("ATELIER_FIRECRACKER_KERNEL"),
            initrd=path("ATELIER_FIRECRACKER_INITRD"),
            boot_args=e.get("ATELIER_FIRECRACKER_BOOT_ARGS", ""),
        )


def resolve_binary(options: FirecrackerOptions) -> tuple[Path | None, str]:
    """The firecracker binary, or None and why not."""
    if options.binary:
        found = shutil.which(options.binary)
        if found is None:
            return None, f"{BIN_ENV}={options.binary}: no such executable file"
        return Path(found).absolute(), ""
    found = shutil.which("firecracker")
    if found is None:
        return None, f"firecracker binary not found (set {BIN_ENV} or put firecracker on PATH)"
    return Path(found).absolute(), ""


def resolve_jailer(options: FirecrackerOptions, binary: Path) -> Path | None:
    """The jailer to use, or None to run Firecracker unjailed."""
    if options.jailer is not None:
        if options.jailer.lower() in ("none", "off", "0", "no"):
            return None
        found = shutil.which(options.jailer)
        return Path(found).absolute() if found else None
    candidate = binary.parent / "jailer"
    return candidate if os.access(candidate, os.X_OK) else None


@dataclass(frozen=True, slots=True)
class Probe:
    """What :func:`probe` found."""

    available: bool
    reason: str
    binary: Path | None = None
    version: str | None = None
    jailer: Path | None = None


def probe(
    options: FirecrackerOptions,
    kvm_status: Callable[[], tuple[bool, str]],
    *,
    euid: int | None = None,
) -> Probe:
    """Available only if the binary exists and answers ``--version`` *and* KVM
    can boot a standard guest; otherwise every reason, joined by ``; ``."""
    problems: list[str] = []
    binary, why = resolve_binary(options)
    version: str | None = None
    if binary is None:
        problems.append(why)
    else:
        version, why = _version(binary)
        if version is None:
            problems.append(why)
    kvm_ok, kvm_reason = kvm_status()
    if not kvm_ok:
        problems.append(kvm_reason)
    if problems:
        return Probe(False, "; ".join(problems), binary, version)
    assert binary is not None and version is not None
    jailer = resolve_jailer(options, binary)
    uid = os.geteuid() if euid is None else euid
    if jailer is not None and uid != 0:
        how = f"jailer {jailer} needs root (running as uid {uid}): runs unjailed"
        jailer = None
    elif jailer is not None:
        how = f"jailed by {jailer} (uid {options.jail_uid}, gid {options.jail_gid})"
    else:
        how = "no jailer next to the binary: runs unjailed"
    return Probe(True, f"{version} ({binary}); {kvm_reason}; {how}", binary, version, jailer)


def _version(binary: Path) -> tuple[str | None, str]:
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=10,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot run {binary} --version: {exc}"
    text = (out.stdout + "\n" + out.stderr).strip()
    if out.returncode != 0:
        return None, f"{binary} --version exited {out.returncode}: {text[:200] or '(no output)'}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first or f"{binary.name} (unknown version)", ""


def _newest(candidates: list[Path]) -> Path | None:
    found = []
    for path in candidates:
        with contextlib.suppress(OSError):
            if path.is_file():
                found.append((path.stat().st_mtime, str(path), path))
    return max(found)[2] if found else None


def _glob(directory: Path, pattern: str) -> list[Path]:
    try:
        return list(directory.glob(pattern))
    except OSError:
        return []


def default_guest_boot(settings: Settings, options: FirecrackerOptions) -> GuestBoot | None:
    """The guest kernel (and initramfs) to boot, or None if there is none yet.

    The kernel is an uncompressed ``vmlinux`` that the image builder
    (``atelier.images.kernel``) extracts to ``<data_dir>/kernels/<version>/vmlinux``
    (ready once ``kernel.json`` is beside it); a ``<data_dir>/kernels/vmlinux*``
    file placed by hand counts too. The newest wins. Atelier never builds one
    here. The initramfs is ``ATELIER_FIRECRACKER_INITRD`` (none by default).
    """
    kernels = settings.data_dir / "kernels"
    kernel = options.kernel or _newest(
        _glob(kernels, "vmlinux*")
        + [p for p in _glob(kernels, "*/vmlinux") if (p.parent / "kernel.json").is_file()]
    )
    if kernel is None:
        return None
    return GuestBoot(kernel=kernel, initrd=options.initrd, extra_args=options.boot_args)


def template_disk(spec: SandboxSpec) -> Path:
    """The raw ext4 image of the sandbox's template, next to its ``rootfs/``:
    the newest complete ``disk-<key>.ext4`` (``atelier.images.diskimage``:
    complete once ``disk-<key>.json`` exists), else ``disk.ext4``. Pass
    ``base_disk=`` to the runtime to build or find it another way."""
    template = spec.rootfs.parent
    built = [p for p in _glob(template, "disk-*.ext4") if p.with_suffix(".json").is_file()]
    return _newest(built) or template / DISK_NAME
