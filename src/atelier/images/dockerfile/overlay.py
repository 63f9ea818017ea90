"""Host mounts of a build: stacked read-only views, a stopped sandbox's disk.

A step's input filesystem is a read-only overlayfs whose lower dirs are the
cached step diffs (newest first) above the FROM template's rootfs. A RUN
sandbox then puts its own overlay on top of that view: overlayfs allows one
overlay as the lower of another (stacking depth 2), so the data dir must not
itself be on an overlay.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ...errors import BuildFailed, RuntimeFailure
from ...runtimes.gvisor import layers

__all__ = [
    "MAX_OPTIONS",
    "copy_tree",
    "has_mounts",
    "mount_disk_readonly",
    "mount_view",
    "unmount",
]

MAX_OPTIONS = 4000  # the kernel takes one page of mount options


async def _run(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 120) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        text = (err or out).decode(errors="replace").strip()[-800:]
        raise RuntimeFailure(f"{argv[0]} failed (exit {proc.returncode}): {text}")
    return out.decode(errors="replace")


async def mount_view(lowers: Sequence[Path], base: Path, target: Path, cache_root: Path) -> Path:
    """Mount ``lowers`` (bottom first) over ``base`` read-only at ``target``;
    with no lowers the base itself is the view (nothing is mounted)."""
    if not lowers:
        return base
    # relative to the cache root: keeps many layers within one page of options
    names = []
    for lower in reversed(lowers):
        try:
            names.append(str(lower.relative_to(cache_root)))
        except ValueError:
            names.append(str(lower))
    names.append(str(base))
    for name in names:
        if any(c in name for c in ",:\n"):
            raise RuntimeFailure(f"path {name} cannot be an overlay lower dir (',' or ':')")
    options = "ro,lowerdir=" + ":".join(names)
    if len(options) > MAX_OPTIONS:
        raise BuildFailed(
            f"too many filesystem layers ({len(lowers)}) for one overlay mount: "
            "combine RUN/COPY steps",
            details={"layers": len(lowers)},
        )
    target.mkdir(parents=True, exist_ok=True)
    await _run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], cwd=cache_root)
    return target


async def mount_disk_readonly(disk: Path, target: Path) -> None:
    """Loop-mount a stopped sandbox's ext4 disk read-only (autoclear loop)."""
    target.mkdir(parents=True, exist_ok=True)
    await _run(["mount", "-t", "ext4", "-o", "loop,ro,noload,nodev", str(disk), str(target)])


def has_mounts(path: Path) -> bool:
    """Whether anything is mounted at or below ``path``."""
    return bool(layers.mounts_under(path))


async def unmount(target: Path) -> None:
    """Unmount everything at or below ``target`` (no-op if nothing is mounted)."""
    if layers.mounts_under(target):
        await layers.unmount_all(target)


async def copy_tree(source: Path, dest: Path) -> None:
    """``cp -a`` the contents of ``source`` into ``dest``: ownership, modes,
    times, hard links, device nodes (whiteouts) and xattrs (opaque dirs)."""
    dest.mkdir(parents=True, exist_ok=True)
    if not os.path.isdir(source):
        raise RuntimeFailure(f"{source} is not a directory")
    await _run(["cp", "-a", "--no-preserve=context", f"{source}/.", f"{dest}/"], timeout=3600)
