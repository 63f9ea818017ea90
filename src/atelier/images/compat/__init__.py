"""Compatibility shims installed into glibc-based templates.

Each shim works around a gap of an old runtime release (see the C sources)
and is a pass-through where the runtime has no such gap.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ...errors import RuntimeFailure

__all__ = ["SHIM_PATH", "install_shims"]

_SOURCES = Path(__file__).resolve().parent
SHIM_PATH = "usr/lib/atelier/libatelier-compat.so"


def install_shims(rootfs: Path, cc: str = "gcc") -> None:
    """Build the preload library with the host compiler and enable it in ``rootfs``."""
    if shutil.which(cc) is None:
        raise RuntimeFailure(f"{cc} is needed to build the template's compat shim; install gcc")
    target = rootfs / SHIM_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Werror",
            "-o",
            str(target),
            str(_SOURCES / "statx_compat.c"),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeFailure(f"building the compat shim failed: {result.stderr.strip()}")
    target.chmod(0o755)
    preload = rootfs / "etc/ld.so.preload"
    preload.parent.mkdir(parents=True, exist_ok=True)
    lines = preload.read_text().splitlines() if preload.exists() else []
    entry = "/" + SHIM_PATH
    if entry not in lines:
        preload.write_text("\n".join([*lines, entry]) + "\n")
