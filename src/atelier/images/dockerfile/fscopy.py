"""COPY/ADD/WORKDIR on the host: write a step's diff next to a read-only view.

The diff becomes an overlay layer above the view, so:

* a destination is resolved in the view (its symlinks followed as inside
  the image: ``/lib`` -> ``usr/lib``), never through the host's;
* every directory the diff needs on the way is created with the metadata the
  view has for it (an upper dir's owner and mode win in overlayfs), new ones
  as root 0755 (or the ``--chown`` owner);
* files get mode and mtime from the source, owner 0:0 (or ``--chown``); for
  ``COPY --from`` and archives the source's owner is kept.

``--chown`` names are looked up in the view's ``/etc/passwd`` and ``/etc/group``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .context import ContextError, Entry, Source, collect_sources, resolve_in_root

__all__ = [
    "CopyError",
    "Owner",
    "apply_copy",
    "extract_archive",
    "is_archive",
    "make_workdir",
    "parse_chmod",
    "resolve_owner",
]


class CopyError(ValueError):
    """A COPY that cannot be done as written (the message says why)."""


@dataclass(frozen=True, slots=True)
class Owner:
    uid: int
    gid: int


def parse_chmod(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise CopyError(f"--chmod={text}: use an octal mode such as 0755") from None
    if not 0 <= mode <= 0o7777:
        raise CopyError(f"--chmod={text}: mode out of range")
    return mode


def _db(view: Path, name: str) -> list[list[str]]:
    rel = resolve_in_root(view, f"etc/{name}")
    try:
        text = (view / rel).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_owner(view: Path, spec: str) -> Owner:
    """``user[:group]`` (names or numbers) as numbers, from the view's files.
    A user without a group gets the user's number as gid (Docker's rule)."""
    user, _, group = spec.partition(":")
    if not user:
        raise CopyError(f"--chown={spec}: missing user")
    if user.isdigit():
        uid = int(user)
    else:
        row = next((r for r in _db(view, "passwd") if r[0] == user and len(r) > 3), None)
        if row is None:
            raise CopyError(f"--chown={spec}: no user {user!r} in the image's /etc/passwd")
        uid = int(row[2])
    if not group:
        return Owner(uid, uid)
    if group.isdigit():
        return Owner(uid, int(group))
    grow = next((r for r in _db(view, "group") if r[0] == group and len(r) > 2), None)
    if grow is None:
        raise CopyError(f"--chown={spec}: no group {group!r} in the image's /etc/group")
    return Owner(uid, int(grow[2]))


def _ensure_dirs(view: Path, diff: Path, real: str, new_owner: Owner) -> None:
    """Create ``diff/real`` and its parents, copying the view's metadata."""
    done: list[str] = []
    for part in [p for p in real.split("/") if p]:
        done.append(part)
        rel = "/".join(done)
        in_diff = diff / rel
        if in_diff.is_dir() and not in_diff.is_symlink():
            continue
        in_view = view / rel
        try:
            st = os.lstat(in_view)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise CopyError(f"/{rel} exists in the image and is not a directory")
        in_diff.mkdir()
        if st is not None:
            os.chown(in_diff, st.st_uid, st.st_gid)
            os.chmod(in_diff, stat.S_IMODE(st.st_mode))
            os.utime(in_diff, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            os.chown(in_diff, new_owner.uid, new_owner.gid)
            os.chmod(in_diff, 0o755)


def _place(view: Path, diff: Path, path: str, new_owner: Owner) -> str:
    """The real path (relative to the root) for ``path``: its parent resolved
    in the view and created in the diff; the last element is not followed."""
    parent, _, name = path.strip("/").rpartition("/")
    real_parent = resolve_in_root(view, parent) if parent else ""
    _ensure_dirs(view, diff, real_parent, new_owner)
    return f"{real_parent}/{name}" if real_parent else name


def _write_entry(
    view: Path,
    diff: Path,
    target: str,
    entry: Entry,
    owner: Owner | None,
    chmod: int | None,
    new_owner: Owner,
) -> None:
    uid, gid = (owner.uid, owner.gid) if owner else (entry.uid, entry.gid)
    if entry.kind == "d":
        # a directory the image already has (maybe through a link, as /lib ->
        # usr/lib) keeps its metadata; a new one gets the source's
        real = resolve_in_root(view, target)
        existing = (view / real).is_dir() if real else True
        dest = diff / real
        if os.path.lexists(dest) and not (dest.is_dir() and not dest.is_symlink()):
            dest.unlink()
        if existing:
            _ensure_dirs(view, diff, real, new_owner)
            return
        _ensure_dirs(view, diff, real.rpartition("/")[0], new_owner)
        if not dest.is_dir():
            dest.mkdir()
        os.chown(dest, uid, gid)
        os.chmod(dest, chmod if chmod is not None else entry.mode)
        os.utime(dest, (entry.mtime, entry.mtime))
        return
    real = _place(view, diff, target, new_owner)
    dest = diff / real
    if os.path.lexists(dest):
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        else:
            dest.unlink()
    if entry.kind == "l":
        os.symlink(entry.link or "", dest)
        os.lchown(dest, uid, gid)
        return
    shutil.copyfile(entry.path, dest, follow_symlinks=False)
    os.chown(dest, uid, gid)
    os.chmod(dest, chmod if chmod is not None else entry.mode)
    os.utime(dest, (entry.mtime, entry.mtime))


def apply_copy(
    view: Path,
    diff: Path,
    sources: Sequence[Source],
    dest: str,
    *,
    owner: Owner | None,
    chmod: int | None = None,
) -> None:
    """Copy ``sources`` to ``dest`` (absolute in the image) into ``diff``.

    ``owner`` None keeps each entry's own owner (the caller passes 0:0 for
    the build context). Docker's rules: a directory source copies its
    contents; with several sources, or a destination ending in ``/`` or
    naming an existing directory, files keep their names inside ``dest``.
    """
    new_owner = owner or Owner(0, 0)
    dest_path = dest.rstrip("/") or "/"
    as_dir = dest.endswith("/") or len(sources) > 1 or any(s.is_dir for s in sources)
    if not as_dir:
        real = resolve_in_root(view, dest_path)
        as_dir = real == "" or (view / real).is_dir()
    if len(sources) > 1 and not dest.endswith("/"):
        real = resolve_in_root(view, dest_path)
        if not (real == "" or (view / real).is_dir()):
            raise CopyError(
                f"with several sources the destination must be a directory ending in / "
                f"(not {dest!r})"
            )
    if as_dir:
        real_dir = resolve_in_root(view, dest_path)
        _ensure_dirs(view, diff, real_dir, new_owner)
    else:
        real_dir = ""
    for source in sources:
        for entry in source.entries:
            if as_dir:
                if entry.rel == "":
                    if source.is_dir:
                        continue  # the directory itself: only its contents are copied
                    target = f"{real_dir}/{source.basename}"
                else:
                    target = f"{real_dir}/{entry.rel}"
            else:
                target = dest_path
            _write_entry(view, diff, target.lstrip("/"), entry, owner, chmod, new_owner)


def make_workdir(view: Path, diff: Path, path: str, user: str | None = None) -> bool:
    """Create the WORKDIR ``path`` in the diff unless the view has it; True if
    made. New directories belong to ``user`` (as BuildKit does), else root."""
    real = resolve_in_root(view, path)
    if real == "" or (view / real).is_dir():
        return False
    owner = Owner(0, 0)
    if user:
        try:
            owner = resolve_owner(view, user)
        except CopyError:
            owner = Owner(0, 0)  # an unknown user: RUN will say so
        if ":" not in user:
            owner = Owner(owner.uid, _primary_gid(view, user, owner.uid))
    _ensure_dirs(view, diff, real, owner)
    return True


def _primary_gid(view: Path, user: str, default: int) -> int:
    key = 2 if user.isdigit() else 0
    for row in _db(view, "passwd"):
        if len(row) > 3 and row[key] == user and row[3].isdigit():
            return int(row[3])
    return default


# -- ADD archives ---------------------------------------------------------------------

_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def is_archive(path: Path) -> bool:
    """A tar file (plain, gzip, bzip2 or xz), by content."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    if head.startswith(_MAGIC):
        return tarfile.is_tarfile(path)
    return len(head) >= 262 and head[257:262] == b"ustar"


def extract_archive(archive: Path, staging: Path) -> Source:
    """Unpack ``archive`` into the empty dir ``staging`` safely: no absolute
    names, no ``..``, nothing written through a link; owners and modes kept.
    Returns the unpacked tree as a directory source."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            name = member.name.lstrip("/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if not parts:
                continue
            if ".." in parts:
                raise CopyError(f"{archive.name}: member {member.name!r} leaves the archive")
            for i in range(1, len(parts)):
                if (staging.joinpath(*parts[:i])).is_symlink():
                    raise CopyError(
                        f"{archive.name}: member {member.name!r} is inside a symbolic link"
                    )
            if member.islnk():
                link = [p for p in member.linkname.lstrip("/").split("/") if p not in ("", ".")]
                if ".." in link or any(
                    staging.joinpath(*link[:i]).is_symlink() for i in range(1, len(link) + 1)
                ):
                    raise CopyError(f"{archive.name}: hard link {member.name!r} is unsafe")
                member.linkname = "/".join(link)
            if member.ischr() or member.isblk() or member.isfifo():
                continue  # device nodes are not unpacked
            member.name = "/".join(parts)
            target = staging.joinpath(*parts)
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            tar.extract(member, staging, set_attrs=True, numeric_owner=True)
    with contextlib.suppress(OSError):
        os.chmod(staging, 0o755)
    try:
        sources = collect_sources(staging, ".", ignore=None, absolute_links=True)
    except ContextError as exc:
        raise CopyError(str(exc)) from exc
    return sources[0]
