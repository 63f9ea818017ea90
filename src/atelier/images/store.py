"""Templates on disk: versions, list, look up, publish, collect, remove.

Layout, under ``settings.templates_dir``::

    <name>/versions/<n>/rootfs/         version n's root filesystem (read-only, immutable)
    <name>/versions/<n>/manifest.json   written last by the builder: present = complete
    <name>/current                      symlink -> versions/<n>: the version new sandboxes get
    <name>/manifest.json                symlink -> current/manifest.json (for simple readers)
    <name>/rootfs                       symlink -> current/rootfs (same)
    <name>/.gc-<n>-<random>/            a version being deleted
    .<name>.lock                        serializes builds, collections and removals of a name
    .<name>.build-<random>/             a build in progress (or crashed); never listed

Every build, pull or import of a name publishes a new version ``n`` (one more
than the highest ever kept) and swaps ``current`` atomically; nothing already
published is written again. A sandbox is pinned to the version it was created
from: its runtime keeps the version's rootfs path (``SandboxSpec.rootfs``), the
audit trail's ``create`` event keeps ``template_version``. Versions that are
not current and that no sandbox uses are deleted by :meth:`TemplateStore.collect_garbage`
(the server and the host CLI call it after a publish and on start-up).

The single-version layout of earlier releases (``<name>/rootfs/`` and
``<name>/manifest.json`` as real entries, no ``current``) is read as version 1.
The first publish into such a name migrates it in place: its manifest moves to
``versions/1/manifest.json`` and ``versions/1/rootfs`` becomes a link to
``../../rootfs``, which stays where it is (sandboxes made before the upgrade
mount that path) until version 1 is collected.

A directory ``<name>/`` without a readable manifest is listed as not ready
(an interrupted copy, something made by hand); it is never used for sandboxes.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import InvalidRequest, RuntimeFailure, TemplateNotFound

__all__ = [
    "CURRENT_LINK",
    "LEASE_SECONDS",
    "MANIFEST_NAME",
    "ROOTFS_NAME",
    "VERSIONS_DIR",
    "TemplateInfo",
    "TemplateStore",
    "publish_version",
    "read_manifest",
    "safe_rmtree",
    "template_lock",
    "validate_name",
]

MANIFEST_NAME = "manifest.json"
ROOTFS_NAME = "rootfs"
VERSIONS_DIR = "versions"
CURRENT_LINK = "current"
# how long a version handed out for a create is protected from collection
# before the sandbox's row (which then pins it) is in the database
LEASE_SECONDS = 120.0
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
    version: int = 1
    versions: tuple[int, ...] = field(default=())  # every version kept on disk

    @property
    def stamp(self) -> str:
        """Changes with every new version (pool and pre-boot keys)."""
        return f"v{self.version}:{self.created_at}"


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
    """The parsed manifest of a template (or version) directory, or None if absent
    or unreadable."""
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


# -- the layout ----------------------------------------------------------------------


def _is_legacy(tdir: Path) -> bool:
    """A single-version directory of earlier releases (nothing versioned yet)."""
    return not os.path.lexists(tdir / CURRENT_LINK) and not (tdir / VERSIONS_DIR).is_dir()


def _versions(tdir: Path) -> list[int]:
    """Versions present (complete or not), ascending; [1] for a legacy directory."""
    if _is_legacy(tdir):
        return [1] if tdir.is_dir() else []
    try:
        names = os.listdir(tdir / VERSIONS_DIR)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and (tdir / VERSIONS_DIR / n).is_dir())


def _version_dir(tdir: Path, version: int) -> Path:
    return tdir / VERSIONS_DIR / str(version)


def _current(tdir: Path) -> int | None:
    """The current version of a template directory (None: nothing published)."""
    if _is_legacy(tdir):
        return 1 if tdir.is_dir() else None
    try:
        target = os.readlink(tdir / CURRENT_LINK)
    except OSError:
        target = ""
    tail = target.rstrip("/").rsplit("/", 1)[-1]
    if tail.isdigit() and _version_dir(tdir, int(tail)).is_dir():
        return int(tail)
    # crash between publishing a version and pointing at it: the newest complete one
    complete = [v for v in _versions(tdir) if read_manifest(_version_dir(tdir, v)) is not None]
    return complete[-1] if complete else None


def _rootfs_of(tdir: Path, version: int) -> Path:
    """Where version ``version``'s rootfs is: the path sandboxes pin (never a link
    that moves: a migrated legacy version keeps its original ``<name>/rootfs``)."""
    if _is_legacy(tdir):
        return tdir / ROOTFS_NAME
    vdir = _version_dir(tdir, version)
    if (vdir / ROOTFS_NAME).is_symlink():  # the migrated legacy version
        return tdir / ROOTFS_NAME
    return vdir / ROOTFS_NAME


def _manifest_dir(tdir: Path, version: int) -> Path:
    return tdir if _is_legacy(tdir) else _version_dir(tdir, version)


def _info(name: str, tdir: Path, version: int | None = None) -> TemplateInfo:
    versions = tuple(_versions(tdir))
    if version is None:
        version = _current(tdir) or (versions[-1] if versions else 1)
    rootfs = _rootfs_of(tdir, version)
    manifest = read_manifest(_manifest_dir(tdir, version))
    if manifest is None:
        return TemplateInfo(
            name, "gvisor", False, None, None, rootfs, version=version, versions=versions
        )
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
        version=version,
        versions=versions,
    )


def _symlink_atomic(target: str, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp-{uuid.uuid4().hex[:8]}")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _ensure_compat_links(tdir: Path) -> None:
    """``<name>/manifest.json`` and (once no legacy tree sits there) ``<name>/rootfs``
    follow ``current``, for readers that know only the single-version layout."""
    _symlink_atomic(f"{CURRENT_LINK}/{MANIFEST_NAME}", tdir / MANIFEST_NAME)
    rootfs = tdir / ROOTFS_NAME
    if rootfs.is_symlink() or not os.path.lexists(rootfs):
        _symlink_atomic(f"{CURRENT_LINK}/{ROOTFS_NAME}", rootfs)


def _migrate_legacy(tdir: Path) -> None:
    """Turn a single-version directory into version 1 of the versioned layout,
    leaving its rootfs in place (hold the name's lock)."""
    manifest = tdir / MANIFEST_NAME
    rootfs = tdir / ROOTFS_NAME
    ready = manifest.is_file() and not manifest.is_symlink() and rootfs.is_dir()
    if not ready:  # an unfinished legacy build: no sandbox can use it
        for leftover in (manifest, rootfs):
            if leftover.is_symlink() or leftover.is_file():
                leftover.unlink()
            elif leftover.is_dir():
                safe_rmtree(leftover)
        (tdir / VERSIONS_DIR).mkdir(exist_ok=True)
        return
    v1 = _version_dir(tdir, 1)
    v1.mkdir(parents=True)
    os.symlink(f"../../{ROOTFS_NAME}", v1 / ROOTFS_NAME)
    os.rename(manifest, v1 / MANIFEST_NAME)
    _symlink_atomic(f"{VERSIONS_DIR}/1", tdir / CURRENT_LINK)
    _ensure_compat_links(tdir)


def publish_version(templates_dir: Path, name: str, work: Path) -> int:
    """Install the finished build directory ``work`` (``rootfs/`` and
    ``manifest.json``) as the next version of ``name`` and make it current;
    the caller holds the name's lock. Returns the new version number."""
    tdir = templates_dir / name
    if not tdir.is_dir():
        if os.path.lexists(tdir):
            tdir.unlink()
        tdir.mkdir(mode=0o755)
    if _is_legacy(tdir):
        _migrate_legacy(tdir)
    (tdir / VERSIONS_DIR).mkdir(exist_ok=True)
    version = max(_versions(tdir), default=0) + 1
    os.rename(work, _version_dir(tdir, version))
    _symlink_atomic(f"{VERSIONS_DIR}/{version}", tdir / CURRENT_LINK)
    _ensure_compat_links(tdir)
    return version


# -- leases: a version handed out for a create, not yet pinned in the database ------

_leases: dict[tuple[str, str, int], list[float]] = {}
_leases_lock = threading.Lock()


def _lease(templates_dir: Path, name: str, version: int, seconds: float) -> None:
    with _leases_lock:
        _leases.setdefault((str(templates_dir), name, version), []).append(
            time.monotonic() + seconds
        )


def _release(templates_dir: Path, name: str, version: int) -> None:
    with _leases_lock:
        held = _leases.get((str(templates_dir), name, version))
        if held:
            held.remove(min(held))
            if not held:
                del _leases[(str(templates_dir), name, version)]


def _leased(templates_dir: Path, name: str) -> set[int]:
    now = time.monotonic()
    with _leases_lock:
        for key, held in list(_leases.items()):
            held[:] = [until for until in held if until > now]
            if not held:
                del _leases[key]
        return {v for (root, n, v) in _leases if root == str(templates_dir) and n == name}


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
    """Read side of the template directory (plus ``remove`` and ``collect_garbage``);
    builders write it through :func:`publish_version`."""

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

    def _dir(self, name: str) -> Path:
        try:
            path = self.path(name)
        except InvalidRequest:
            raise self._unknown(name) from None
        if not path.is_dir():
            raise self._unknown(name)
        return path

    def get(self, name: str) -> TemplateInfo:
        """The current version of ``name`` (possibly not ``ready``); TemplateNotFound if absent."""
        return _info(name, self._dir(name))

    def get_version(self, name: str, version: int) -> TemplateInfo:
        """Version ``version`` of ``name``; TemplateNotFound if it is not on disk."""
        tdir = self._dir(name)
        if version not in _versions(tdir):
            raise TemplateNotFound(
                f"template {name!r} has no version {version} "
                f"(versions: {', '.join(map(str, _versions(tdir))) or 'none'})",
                details={"template": name, "version": version},
            )
        return _info(name, tdir, version)

    def manifest_path(self, name: str, version: int) -> Path:
        """The manifest file of one version of ``name`` (a real file, never a link)."""
        return _manifest_dir(self._dir(name), version) / MANIFEST_NAME

    def rootfs(self, name: str) -> Path:
        """The rootfs of a ready template; TemplateNotFound if absent or not ready."""
        return self.checkout(name, lease=0).rootfs

    def checkout(self, name: str, *, lease: float = LEASE_SECONDS) -> TemplateInfo:
        """The current version of a ready template, for a new sandbox: protected
        from :meth:`collect_garbage` for ``lease`` seconds in this process, until
        the sandbox's row pins it."""
        info = self.get(name)
        if not info.ready:
            raise TemplateNotFound(
                f"template {name!r} is not built yet (or its build was interrupted); "
                f"rebuild it with: python -m atelier.images build {name} --force",
                details={"template": name},
            )
        if lease > 0:
            _lease(self.root, name, info.version, lease)
        return info

    def release(self, name: str, version: int) -> None:
        """End one :meth:`checkout` lease (the sandbox's row now pins the version)."""
        _release(self.root, name, version)

    def leased(self, name: str) -> set[int]:
        """Versions of ``name`` handed out by :meth:`checkout` and still protected."""
        return _leased(self.root, name)

    def collect_garbage(self, name: str, keep: Collection[int] | None) -> builtins.list[int]:
        """Delete the versions of ``name`` that are not current, not in ``keep``
        (the versions sandboxes use) and not leased; ``keep=None`` (unknown)
        deletes nothing. Returns the versions deleted."""
        if keep is None:
            return []
        try:
            tdir = self.path(name)
        except InvalidRequest:
            return []
        removed: builtins.list[int] = []
        with template_lock(self.root, name):
            if not tdir.is_dir() or _is_legacy(tdir):
                return []
            current = _current(tdir)
            protected = {*keep, *self.leased(name)}
            for version in _versions(tdir):
                if version == current or version in protected:
                    continue
                self._remove_version(tdir, version)
                removed.append(version)
            for stale in tdir.glob(".gc-*"):
                safe_rmtree(stale)  # an interrupted earlier collection
        return removed

    @staticmethod
    def _remove_version(tdir: Path, version: int) -> None:
        vdir = _version_dir(tdir, version)
        tag = uuid.uuid4().hex[:8]
        if (vdir / ROOTFS_NAME).is_symlink():  # the migrated legacy tree
            legacy = tdir / ROOTFS_NAME
            if legacy.is_dir() and not legacy.is_symlink():
                doomed = tdir / f".gc-{version}-{tag}-rootfs"
                legacy.rename(doomed)
                safe_rmtree(doomed)
            _ensure_compat_links(tdir)
        doomed = tdir / f".gc-{version}-{tag}"
        vdir.rename(doomed)
        safe_rmtree(doomed)

    def remove(self, name: str) -> None:
        """Delete a template (every version, ready or not). Sandboxes still using
        it break: the caller checks that none does."""
        path = self.path(name)
        with template_lock(self.root, name):
            if not path.is_dir():
                raise self._unknown(name)
            # rename first: the name disappears at once, the slow delete follows
            doomed = self.root / f".{name}.removing-{uuid.uuid4().hex[:8]}"
            path.rename(doomed)
            safe_rmtree(doomed)
