"""The step cache: one directory per build step, keyed by content.

Layout, under ``<data_dir>/build-cache/`` (0700: diffs hold image files)::

    <key>/config.json   the step: instruction, line, parent key, image config after it
    <key>/diff/         the step's filesystem change, an overlayfs upper dir
                        (whiteouts = 0/0 char devices, opaque dirs =
                        ``trusted.overlay.opaque``); absent for config-only steps
    .tmp-<random>/      an entry being written (renamed to <key> when complete)
    .trash-<random>/    a replaced entry (``--no-cache``), deleted by the next prune
    .lock               builds hold it shared, ``prune`` exclusive
    .locks/<key>        one step computed at a time per key

Key = sha256(format version, parent key, the instruction after substitution,
the build-arg values it sees, the content hash of its sources): a step is
reused only when everything it depends on is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import Settings
from ..store import safe_rmtree

__all__ = ["CACHE_FORMAT", "BuildCache", "CacheEntry", "PruneResult", "step_key"]

CACHE_FORMAT = 1


def step_key(
    parent: str | None,
    instruction: str,
    *,
    args: Mapping[str, str] | None = None,
    content: str | None = None,
) -> str:
    """The cache key of a step (64 hex digits)."""
    record = {
        "format": CACHE_FORMAT,
        "parent": parent,
        "instruction": instruction,
        "args": sorted((args or {}).items()),
        "content": content,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: str
    path: Path
    config: Mapping[str, Any]

    @property
    def diff(self) -> Path | None:
        d = self.path / "diff"
        return d if d.is_dir() else None


@dataclass(frozen=True, slots=True)
class PruneResult:
    removed: int
    kept: int
    bytes_freed: int


def _du(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


@contextlib.contextmanager
def _flock(path: Path, *, shared: bool = False) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class BuildCache:
    def __init__(self, settings: Settings) -> None:
        self.root = Path(os.path.abspath(settings.data_dir)) / "build-cache"

    def _ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Held (shared) for a whole build: prune waits for it."""
        self._ensure()
        with _flock(self.root / ".lock", shared=True):
            yield

    @contextlib.contextmanager
    def step_lock(self, key: str) -> Iterator[None]:
        """One builder computes ``key`` at a time (the other then finds it cached)."""
        self._ensure()
        with _flock(self.root / ".locks" / key):
            yield

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / key

    def lookup(self, key: str) -> CacheEntry | None:
        path = self.path(key)
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict):
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # last used: prune keeps recently used entries
        return CacheEntry(key, path, config)

    def new_tmp(self) -> Path:
        """An empty dir for an entry being written (pass it to :meth:`commit`)."""
        self._ensure()
        tmp = self.root / f".tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir(mode=0o700)
        (tmp / "diff").mkdir(mode=0o755)
        return tmp

    def commit(
        self, tmp: Path, key: str, config: Mapping[str, Any], *, replace: bool = False
    ) -> CacheEntry:
        """Complete the entry in ``tmp`` (its ``diff`` filled, maybe empty:
        a config-only step): config.json last, then renamed to ``key``. An
        entry that appeared meanwhile wins unless ``replace``. ``tmp`` is
        gone afterwards, whatever happens."""
        try:
            diff = tmp / "diff"
            if diff.is_dir() and not any(diff.iterdir()):
                diff.rmdir()
            (tmp / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n")
            final = self.path(key)
            if final.exists():
                if not replace:
                    safe_rmtree(tmp)
                    found = self.lookup(key)
                    if found is not None:
                        return found
                else:
                    # a running build may have it mounted: prune deletes it later
                    final.rename(self.root / f".trash-{uuid.uuid4().hex[:12]}")
            tmp.rename(final)
        except BaseException:
            safe_rmtree(tmp)
            raise
        return CacheEntry(key, final, dict(config))

    def store(
        self,
        key: str,
        config: Mapping[str, Any],
        populate: Callable[[Path], None] | None = None,
        *,
        replace: bool = False,
    ) -> CacheEntry:
        """Write an entry atomically: ``populate(diff_dir)`` fills the diff."""
        tmp = self.new_tmp()
        try:
            if populate is not None:
                populate(tmp / "diff")
        except BaseException:
            safe_rmtree(tmp)
            raise
        return self.commit(tmp, key, config, replace=replace)

    @contextlib.asynccontextmanager
    async def step_lock_async(self, key: str) -> AsyncIterator[None]:
        """:meth:`step_lock` without blocking the event loop while waiting."""
        self._ensure()
        path = self.root / ".locks" / key
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

    def prune(
        self, keep: set[str], *, everything: bool = False, older_than: float = 0.0
    ) -> PruneResult:
        """Delete entries not in ``keep`` (all with ``everything``) and not used
        in the last ``older_than`` seconds, plus leftovers of crashed writes.
        Waits for running builds (exclusive lock)."""
        if not self.root.is_dir():
            return PruneResult(0, 0, 0)
        removed = kept = freed = 0
        now = time.time()
        with _flock(self.root / ".lock"):
            for entry in sorted(self.root.iterdir()):
                name = entry.name
                if name in (".lock", ".locks"):
                    continue
                leftover = name.startswith((".tmp-", ".trash-"))
                if not leftover:
                    if name.startswith("."):
                        continue
                    recent = now - entry.stat().st_mtime < older_than
                    if not everything and (name in keep or recent):
                        kept += 1
                        continue
                freed += _du(entry)
                safe_rmtree(entry)
                if not leftover:
                    removed += 1
            shutil.rmtree(self.root / ".locks", ignore_errors=True)
        return PruneResult(removed, kept, freed)
