"""The sandbox's disk: a sparse ext4 image, loop-mounted, under an overlayfs.

Per sandbox directory::

    disk.img     sparse file of disk_mib MiB, ext4 (the disk size limit)
    layer/       disk.img loop-mounted; holds upper/, work/ and tmp/
    rootfs/      overlayfs: lowerdir = the spec's extra layers (snapshots',
                 topmost first) over the template's read-only rootfs,
                 upperdir = layer/upper  (what the sandbox sees as /)

``/tmp`` is bind-mounted from ``layer/tmp`` (not from inside the overlay, so
the sandbox cannot turn it into a symlink to a host path) and counts against
the disk like everything else.

The loop device is attached by ``mount -o loop``, which sets the autoclear
flag: unmounting ``layer/`` detaches it. :func:`detach_loops` finds any
device still backed by ``disk.img`` through sysfs, so nothing leaks even if
the process that mounted it is gone.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import RuntimeFailure
from .proc import run_command

__all__ = [
    "LayerPaths",
    "MountEntry",
    "create_disk",
    "detach_loops",
    "ensure_mounted",
    "is_mounted",
    "loop_devices_for",
    "mount_table",
    "mounts_under",
    "overlay_options",
    "unmount_all",
]

MIN_DISK_MIB = 16
MAX_OPTIONS = 4096  # mount(2) copies one page of options
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class LayerPaths:
    disk: Path
    layer: Path
    upper: Path
    work: Path
    tmp: Path
    rootfs: Path

    @classmethod
    def of(cls, base: Path) -> LayerPaths:
        layer = base / "layer"
        return cls(
            disk=base / "disk.img",
            layer=layer,
            upper=layer / "upper",
            work=layer / "work",
            tmp=layer / "tmp",
            rootfs=base / "rootfs",
        )


@dataclass(frozen=True, slots=True)
class MountEntry:
    target: Path
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_table(mountinfo: str | None = None) -> list[MountEntry]:
    """Mounts of this process's namespace, from ``/proc/self/mountinfo``."""
    if mountinfo is None:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            mountinfo = fh.read()
    entries = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 3:
            continue
        entries.append(
            MountEntry(
                Path(_unescape(fields[4])),
                fields[sep + 1],
                _unescape(fields[sep + 2]),
            )
        )
    return entries


def mounts_under(base: Path, table: list[MountEntry] | None = None) -> list[MountEntry]:
    """Mounts at or below ``base``, deepest first (the order to unmount them)."""
    base = Path(os.path.abspath(base))
    found = [m for m in (table or mount_table()) if m.target == base or base in m.target.parents]
    # Later mounts over earlier ones unmount first; deeper paths before shallower.
    found.reverse()
    found.sort(key=lambda m: len(m.target.parts), reverse=True)
    return found


def is_mounted(path: Path, fstype: str | None = None) -> bool:
    path = Path(os.path.abspath(path))
    return any(m.target == path and (fstype is None or m.fstype == fstype) for m in mount_table())


def _check_option_path(path: Path) -> None:
    if any(c in str(path) for c in ",:\n"):
        raise RuntimeFailure(f"path {path} cannot be used in overlay mount options (',' or ':')")


async def create_disk(disk: Path, size_mib: int) -> None:
    """A sparse ext4 image of ``size_mib`` MiB (nothing is written but metadata)."""
    if size_mib < MIN_DISK_MIB:
        raise RuntimeFailure(f"disk of {size_mib} MiB is too small (minimum {MIN_DISK_MIB})")
    with open(disk, "wb") as fh:
        fh.truncate(size_mib * 1024 * 1024)
    await run_command(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",  # no blocks reserved for root: the whole size is usable
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
            "-L",
            "atelier",
            str(disk),
        ],
        timeout=120,
    )


async def _mount_layer(paths: LayerPaths) -> None:
    paths.layer.mkdir(parents=True, exist_ok=True)
    # noinit_itable: the image is sparse (reads as zeros), so the kernel need
    # not zero the inode tables in the background, which would un-sparse it.
    # discard: files deleted in the sandbox give their space back to the host.
    await run_command(
        [
            "mount",
            "-t",
            "ext4",
            "-o",
            "loop,noinit_itable,discard,nodev",
            str(paths.disk),
            str(paths.layer),
        ],
        timeout=60,
    )
    for d in (paths.upper, paths.work):
        d.mkdir(mode=0o755, exist_ok=True)
    if not paths.tmp.exists():
        paths.tmp.mkdir()
        os.chmod(paths.tmp, 0o1777)


def overlay_options(paths: LayerPaths, lowers: Sequence[Path]) -> str:
    """The overlay mount options: ``lowers`` topmost first (extra layers, then
    the template's rootfs). mount(2) takes at most one page of options: a
    stack too long for it raises RuntimeFailure (see docs/hibernate.md)."""
    for p in (*lowers, paths.upper, paths.work):
        _check_option_path(p)
    lowerdir = ":".join(str(p) for p in lowers)
    opts = f"lowerdir={lowerdir},upperdir={paths.upper},workdir={paths.work}"
    if len(opts.encode()) >= MAX_OPTIONS:
        raise RuntimeFailure(
            f"{len(lowers)} layers make overlay options of {len(opts.encode())} bytes "
            f"(the kernel takes under {MAX_OPTIONS}): the snapshot chain is too deep"
        )
    return opts


async def _mount_overlay(paths: LayerPaths, lowers: Sequence[Path]) -> None:
    opts = overlay_options(paths, lowers)
    paths.rootfs.mkdir(parents=True, exist_ok=True)
    await run_command(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(paths.rootfs)], timeout=60
    )


async def ensure_mounted(paths: LayerPaths, lower: Path, layers: Sequence[Path] = ()) -> None:
    """Mount the disk layer and the overlay unless they already are (after a
    reboot or a crash they are gone: mount them again). ``layers`` are extra
    read-only layers above ``lower`` (the template's rootfs), topmost first."""
    lower = Path(os.path.abspath(lower))
    if not lower.is_dir():
        raise RuntimeFailure(f"template rootfs {lower} is not a directory")
    extra = [Path(os.path.abspath(p)) for p in layers]
    for p in extra:
        if not p.is_dir():
            raise RuntimeFailure(f"file layer {p} is not a directory")
    table = mount_table()
    layer_ok = any(m.target == paths.layer and m.fstype == "ext4" for m in table)
    overlay_ok = any(m.target == paths.rootfs and m.fstype == "overlay" for m in table)
    if overlay_ok and layer_ok:
        return
    if overlay_ok:  # an overlay without its upper layer: remount both cleanly
        await _umount(paths.rootfs)
    if not layer_ok:
        if not paths.disk.is_file():
            raise RuntimeFailure(f"disk image {paths.disk} is missing")
        await _mount_layer(paths)
    await _mount_overlay(paths, [*extra, lower])


async def _umount(target: Path) -> None:
    res = await run_command(["umount", str(target)], timeout=60, check=False)
    if res.ok or not is_mounted(target):
        return
    # Busy (a straggling process still uses it): detach it from the tree now;
    # the kernel releases it (and the loop device) once the last user is gone.
    await asyncio.sleep(0.2)
    res = await run_command(["umount", str(target)], timeout=60, check=False)
    if res.ok or not is_mounted(target):
        return
    await run_command(["umount", "--lazy", str(target)], timeout=60)


async def unmount_all(base: Path) -> None:
    """Unmount everything at or below ``base`` (deepest first)."""
    for _ in range(4):  # stacked mounts on one target need one pass each
        found = mounts_under(base)
        if not found:
            return
        for entry in found:
            await _umount(entry.target)
    if mounts_under(base):
        raise RuntimeFailure(f"cannot unmount everything under {base}")


def loop_devices_for(disk: Path, sys_block: Path = Path("/sys/block")) -> list[str]:
    """Loop devices (``/dev/loopN``) whose backing file is ``disk``."""
    want = os.path.abspath(disk)
    found = []
    try:
        entries = sorted(sys_block.glob("loop*"))
    except OSError:
        return []
    for entry in entries:
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)") == want:
            found.append(f"/dev/{entry.name}")
    return found


async def detach_loops(disk: Path, timeout: float = 5.0) -> None:
    """Detach every loop device backed by ``disk`` and wait until they are gone.

    A device still held (e.g. by a dying process whose mount namespace has
    the layer) is only marked autoclear by the kernel; wait for that, then
    give up quietly: the kernel frees it when the holder goes.
    """
    for dev in loop_devices_for(disk):
        res = await run_command(["losetup", "--detach", dev], timeout=30, check=False)
        if not res.ok and dev in loop_devices_for(disk):
            raise RuntimeFailure(f"cannot detach {dev} from {disk}: {res.describe()}")
    deadline = time.monotonic() + timeout
    while loop_devices_for(disk) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
