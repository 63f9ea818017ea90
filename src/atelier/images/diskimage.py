"""Disk images of the VM runtimes: a template's rootfs as ext4, and per-sandbox overlays.

The template tree becomes a raw ext4 image with ``mkfs.ext4 -d`` (no loop
mount, no root needed for the copy), built once per template content and
kept beside the template::

    <templates>/<name>/
      rootfs/                    the tree (also what gvisor uses)
      disk-<key>.ext4            raw ext4 image of rootfs/ (read-only for VMs)
      disk-<key>.json            written last: the image is complete
      .disk.lock                 serializes builds

``<key>`` hashes the template's manifest (or, without one, the rootfs
directory's identity) and the image parameters, so a changed template gets a
new image while VMs whose overlays point at the old one keep working.

Every sandbox gets a qcow2 overlay backed by that image
(:func:`create_overlay`): its virtual size is the sandbox's ``disk_mib``,
so the limit is real, and nothing is copied; the guest grows the filesystem
to the disk size at boot (``resize2fs`` in the initramfs).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import InvalidRequest, RuntimeFailure

__all__ = [
    "IMAGE_VERSION",
    "BaseDisk",
    "create_overlay",
    "ensure_base_disk",
    "image_size_mib",
    "tree_usage",
]

IMAGE_VERSION = 1  # bump when the mkfs options change
_MIB = 1024 * 1024
_BLOCK = 4096
_TIMEOUT = 900
# -T default: without it mke2fs picks the "small" profile (1 KiB blocks) below
# 512 MiB; -m 0: the sandbox's disk is all the user's; itables initialized now
# rather than by the guest's ext4lazyinit thread writing into every overlay.
MKFS_OPTIONS = (
    "-q", "-F", "-t", "ext4", "-T", "default", "-b", "4096", "-I", "256", "-m", "0",
    "-L", "atelier-root", "-E", "lazy_itable_init=0,lazy_journal_init=0",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BaseDisk:
    path: Path  # the raw ext4 image
    size_mib: int
    key: str


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes the tree's files take in 4 KiB blocks, number of entries), without
    following links or crossing filesystems."""
    total, entries = 0, 0
    device = root.stat().st_dev
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                entries += 1
                st = entry.stat(follow_symlinks=False)
                total += -(-st.st_size // _BLOCK) * _BLOCK
                if entry.is_dir(follow_symlinks=False) and st.st_dev == device:
                    stack.append(Path(entry.path))
    return total, entries


def image_size_mib(used_bytes: int, entries: int) -> int:
    """Image size for a tree: its blocks + 25 % + inode tables/journal headroom,
    rounded up to 64 MiB."""
    need = used_bytes * 5 // 4 + entries * 512 + 96 * _MIB
    return -(-need // (64 * _MIB)) * 64


def _identity(rootfs: Path) -> str:
    manifest = rootfs.parent / "manifest.json"
    digest = hashlib.sha256(f"v{IMAGE_VERSION}\0{' '.join(MKFS_OPTIONS)}\0".encode())
    try:
        digest.update(manifest.read_bytes())
    except OSError:
        st = rootfs.stat()
        digest.update(f"{rootfs.resolve()}\0{st.st_ino}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".disk.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(stamp: Path, image: Path) -> BaseDisk | None:
    try:
        data = json.loads(stamp.read_text())
        size_mib = int(data["size_mib"])
        key = str(data["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not image.is_file() or image.stat().st_size != size_mib * _MIB:
        return None
    return BaseDisk(image, size_mib, key)


def ensure_base_disk(rootfs: Path, mkfs: str = "mkfs.ext4") -> BaseDisk:
    """The ext4 image of the template whose tree is ``rootfs`` (built if missing)."""
    if not rootfs.is_dir():
        raise InvalidRequest(f"template rootfs {rootfs} is not a directory")
    template_dir = rootfs.parent
    key = _identity(rootfs)
    image = template_dir / f"disk-{key}.ext4"
    stamp = template_dir / f"disk-{key}.json"
    found = _load(stamp, image)
    if found is not None:
        return found
    with _locked(template_dir):
        found = _load(stamp, image)
        if found is not None:
            return found
        return _build(rootfs, image, stamp, key, mkfs)


def _build(rootfs: Path, image: Path, stamp: Path, key: str, mkfs: str) -> BaseDisk:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    binary = shutil.which(mkfs, path=search)
    if binary is None:
        raise RuntimeFailure(f"{mkfs} is not installed (apt-get install e2fsprogs)")
    used, entries = tree_usage(rootfs)
    size_mib = image_size_mib(used, entries)
    fd, tmp_name = tempfile.mkstemp(prefix=".disk-", suffix=".ext4", dir=image.parent)
    tmp = Path(tmp_name)
    try:
        os.ftruncate(fd, size_mib * _MIB)
        os.close(fd)
        try:
            result = subprocess.run(
                [binary, *MKFS_OPTIONS, "-d", str(rootfs), str(tmp)],
                capture_output=True,
                text=True,
                timeout=_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeFailure(f"cannot run {binary}: {exc}") from exc
        if result.returncode != 0:
            said = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise RuntimeFailure(f"mkfs.ext4 -d {rootfs} failed (exit {result.returncode}): {said}")
        tmp.chmod(0o644)
        tmp.replace(image)
    finally:
        tmp.unlink(missing_ok=True)
    data = {
        "key": key,
        "size_mib": size_mib,
        "rootfs": str(rootfs),
        "tree_bytes": used,
        "tree_entries": entries,
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    stamp_tmp = stamp.with_suffix(".tmp")
    stamp_tmp.write_text(json.dumps(data, indent=2) + "\n")
    stamp_tmp.replace(stamp)
    return BaseDisk(image, size_mib, key)


def create_overlay(
    backing: Path,
    overlay: Path,
    size_mib: int,
    backing_format: str = "raw",
    qemu_img: str = "qemu-img",
) -> None:
    """A qcow2 file at ``overlay`` over ``backing`` with a virtual size of ``size_mib``."""
    binary = shutil.which(qemu_img)
    if binary is None:
        raise RuntimeFailure(f"{qemu_img} is not installed (apt-get install qemu-utils)")
    argv = [
        binary, "create", "-q", "-f", "qcow2", "-F", backing_format,
        "-b", str(backing), str(overlay), f"{size_mib}M",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeFailure(f"cannot run {binary}: {exc}") from exc
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise RuntimeFailure(f"qemu-img create {overlay} failed: {said}")
