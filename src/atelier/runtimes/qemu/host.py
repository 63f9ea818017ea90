"""Can this host run the qemu runtime, and with what (``availability``)."""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

from ...images.kernel import GuestKernel
from .accel import AccelChoice

__all__ = ["SBIN_PATH", "probe", "qemu_version"]

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")


@functools.cache
def qemu_version(qemu_bin: str) -> str:
    """``7.2.22`` from ``qemu-system-x86_64 --version`` (``unknown`` if it cannot say)."""
    try:
        out = subprocess.run(
            [qemu_bin, "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else "unknown"


def probe(
    qemu_bin: str, run_as: str, accel: AccelChoice, kernel: GuestKernel | None
) -> tuple[bool, str]:
    """(available, reason): what is missing, or how it runs here."""
    if os.geteuid() != 0:
        return False, f"needs root for cgroups and -runas (running as uid {os.geteuid()})"
    binary = shutil.which(qemu_bin)
    if binary is None:
        return False, f"{qemu_bin} not found (apt-get install qemu-system-x86)"
    missing = [t for t in ("qemu-img", "mkfs.ext4") if not shutil.which(t, path=SBIN_PATH)]
    if not any(Path(p).is_file() for p in _BUSYBOX):
        missing.append("busybox (busybox-static)")
    if kernel is None:  # needed to fetch the guest kernel on first use
        missing += [t for t in ("lz4", "apt-get", "dpkg-deb") if not shutil.which(t)]
    if missing:
        return False, f"missing host tools: {', '.join(missing)} (see scripts/setup.sh)"
    try:
        machines = subprocess.run(
            [binary, "-machine", "help"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot run {binary}: {exc}"
    if "microvm" not in machines:
        return False, f"{binary} has no microvm machine type"
    if run_as != "root":
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            return False, f"user {run_as!r} (ATELIER_QEMU_USER) does not exist"
    if not accel.usable:
        return False, accel.reason
    shown = kernel.version if kernel else "fetched on first use"
    how = f"QEMU {qemu_version(qemu_bin)}, accel {accel.name} ({accel.reason})"
    return True, f"{how}, guest kernel {shown}"
