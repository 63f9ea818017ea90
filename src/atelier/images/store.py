"""Templates on disk: list, look up, remove.

Layout, under ``settings.templates_dir``::

    <name>/rootfs/         the root filesystem tree (read-only for sandboxes)
    <name>/manifest.json   written last by the builder: its presence = "ready"
    .<name>.lock           serializes builds and removals of one template
    .<name>.build-<random>/    a build in progress (or crashed); never listed

A directory ``<name>/`` without a readable manifest is listed as not ready
(an interrupted copy, something made by hand); it is never used for sandboxes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import InvalidRequest, RuntimeFailure, TemplateNotFound

__all__ = [
    "MANIFEST_NAME",
    "ROOTFS_NAME",
    "TemplateInfo",
    "TemplateStore",
    "read_manifest",
    "safe_rmtree",
    "template_lock",
    "validate_name",
]

MANIFEST_NAME = "manifest.json"
ROOTFS_NAME = "rootfs"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    name: str
    runtime: str
    ready: bool
    size_bytes: int | None
    created_at: datetime | None
    rootfs: Path
    suite: str | None = None
    packages: tuple[str, ...] = field(default=())


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid template name, else raise InvalidRequest."""
    if not _NAME_RE.match(name) or ".." in name:
        raise InvalidRequest(
            f"invalid template name {name!r}: use 1-63 of a-z 0-9 . _ - "
            "starting with a letter or digit",
            details={"name": name},
        )
    return name


def read_manifest(template_dir: Path) -> dict[str, Any] | None:
    """The parsed manifest of a template directory, or None if absent or unreadable."""
    try:
        data = json.loads((template_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _info(name: str, template_dir: Path) -> TemplateInfo:
    rootfs = template_dir / ROOTFS_NAME
    manifest = read_manifest(template_dir)
    if manifest is None:
        return TemplateInfo(name, "gvisor", False, None, None, rootfs)
    size = manifest.get("size_bytes")
    packages = manifest.get("packages") or []
    return TemplateInfo(
        name=name,
        runtime=str(manifest.get("runtime") or "gvisor"),
        ready=rootfs.is_dir(),
        size_bytes=size if isinstance(size, int) else None,
        created_at=_parse_time(manifest.get("created_at")),
        rootfs=rootfs,
        suite=manifest.get("suite") if isinstance(manifest.get("suite"), str) else None,
        packages=tuple(str(p) for p in packages) if isinstance(packages, list) else (),
    )


@contextlib.contextmanager
def template_lock(templates_dir: Path, name: str) -> Iterator[None]:
    """Exclusive lock on one template name (builds and removals), across processes."""
    templates_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(templates_dir / f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts_under(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    root = str(path.resolve())
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) > 4:
            point = _unescape_mount(parts[4])
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def safe_rmtree(path: Path) -> None:
    """Delete a tree, first detaching anything mounted inside it (debootstrap
    mounts /proc, /sys and may bind /dev into its target; a crash can leave
    them, and a plain rmtree would then walk into the host's)."""
    if not path.exists() and not path.is_symlink():
        return
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_under(path):
        raise RuntimeFailure(f"cannot remove {path}: something is still mounted inside it")
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    shutil.rmtree(path)


class TemplateStore:
    """Read side of the template directory (plus ``remove``); builders write it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def root(self) -> Path:
        return self.settings.templates_dir

    def path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def list(self) -> list[TemplateInfo]:
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        return [
            _info(entry.name, entry)
            for entry in entries
            if not entry.name.startswith(".") and entry.is_dir() and _NAME_RE.match(entry.name)
        ]

    def _unknown(self, name: str) -> TemplateNotFound:
        known = ", ".join(t.name for t in self.list()) or "none"
        return TemplateNotFound(
            f"template {name!r} not found (known templates: {known}); "
            f"build it with: python -m atelier.images build {name}",
            details={"template": name},
        )

    def get(self, name: str) -> TemplateInfo:
        """The template ``name`` (possibly not ``ready``); TemplateNotFound if absent."""
        try:
            path = self.path(name)
        except InvalidRequest:
            raise self._unknown(name) from None
        if not path.is_dir():
            raise self._unknown(name)
        return _info(name, path)

    def rootfs(self, name: str) -> Path:
        """The rootfs of a ready template; TemplateNotFound if absent or not ready."""
        info = self.get(name)
        if not info.ready:
            raise TemplateNotFound(
                f"template {name!r} is not built yet (or its build was interrupted); "
                f"rebuild it with: python -m atelier.images build {name} --force",
                details={"template": name},
            )
        return info.rootfs

    def remove(self, name: str) -> None:
        """Delete a template (ready or not). Sandboxes still using its rootfs break:
        the caller checks that none does."""
        path = self.path(name)
        with template_lock(self.root, name):
            if not path.is_dir():
                raise self._unknown(name)
            # rename first: the name disappears at once, the slow delete follows
            doomed = self.root / f".{name}.removing-{uuid.uuid4().hex[:8]}"
            path.rename(doomed)
            safe_rmtree(doomed)
