"""Build contexts uploaded as tar archives: size limits and safe unpacking.

The body of ``POST /v1/templates/build`` is a tar archive, plain or gzip
(detected by content). It is written to a file first (refused past
:data:`MAX_UPLOAD_BYTES`), then unpacked member by member into an empty
directory, refusing with ``400 invalid_request``:

* absolute member names and names with a ``..`` component;
* members below a symlink member (``link/x`` where ``link`` is a symlink: the
  write would follow it out of the directory); hard links whose target is not
  a regular file met earlier in the archive or is unsafe by the rules above;
* devices, FIFOs and other special members; duplicate names;
* more than :data:`MAX_MEMBERS` members or more than :data:`MAX_CONTEXT_BYTES`
  of file content (a gzip bomb stops there).

Symlinks themselves are kept as they are (the Dockerfile builder refuses
sources that lead outside the context). Files get their permission bits
(setuid, setgid and sticky are dropped) and are owned by the server's user.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from ..errors import InvalidRequest

__all__ = [
    "MAX_CONTEXT_BYTES",
    "MAX_MEMBERS",
    "MAX_UPLOAD_BYTES",
    "extract_context",
    "receive_upload",
]

MAX_UPLOAD_BYTES = 256 * 2**20  # the request body (compressed or not)
MAX_CONTEXT_BYTES = 1024 * 2**20  # file content once unpacked
MAX_MEMBERS = 50_000


async def receive_upload(
    chunks: AsyncIterator[bytes], dest: Path, limit: int = MAX_UPLOAD_BYTES
) -> int:
    """Write the request body to ``dest``; InvalidRequest past ``limit`` bytes."""
    size = 0
    with dest.open("wb") as fh:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise InvalidRequest(
                    f"build context too large: more than {limit // 2**20} MiB "
                    "(send a smaller context directory)",
                    details={"limit_bytes": limit},
                )
            fh.write(chunk)
    if size == 0:
        raise InvalidRequest("empty request body: send the build context as a tar archive")
    return size


def _member_path(name: str) -> PurePosixPath | None:
    """The normalized relative path of a member name (None for the root itself);
    InvalidRequest for absolute names and ``..``."""
    if name.startswith("/"):
        raise InvalidRequest(
            f"build context archive: absolute member name {name!r}", details={"member": name}
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidRequest(
            f"build context archive: member name {name!r} leaves the context",
            details={"member": name},
        )
    return PurePosixPath(*parts) if parts else None


def extract_context(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int = MAX_CONTEXT_BYTES,
    max_members: int = MAX_MEMBERS,
) -> int:
    """Unpack the tar (or tar.gz) ``archive`` into the empty directory ``dest``
    under the rules of this module; returns the number of members."""
    try:
        tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as exc:
        raise InvalidRequest(
            f"the build context is not a tar archive (plain or gzip): {exc}"
        ) from None
    seen: set[PurePosixPath] = set()
    links: set[PurePosixPath] = set()  # symlink members
    files: set[PurePosixPath] = set()  # regular files (hard link targets)
    total = count = 0
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise InvalidRequest(f"corrupt build context archive: {exc}") from None
            if member is None:
                break
            count += 1
            if count > max_members:
                raise InvalidRequest(
                    f"build context archive has more than {max_members} members",
                    details={"limit_members": max_members},
                )
            rel = _member_path(member.name)
            if rel is None:
                continue
            if rel in seen:
                raise InvalidRequest(
                    f"build context archive: duplicate member {member.name!r}",
                    details={"member": member.name},
                )
            seen.add(rel)
            for parent in rel.parents:
                if parent in links:
                    raise InvalidRequest(
                        f"build context archive: {member.name!r} is below the symlink "
                        f"{str(parent)!r}",
                        details={"member": member.name},
                    )
            target = dest / rel
            try:
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    os.chmod(target, (member.mode & 0o777) | 0o700)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    os.symlink(member.linkname, target)
                    links.add(rel)
                elif member.islnk():
                    source = _member_path(member.linkname)
                    if source is None or source not in files:
                        raise InvalidRequest(
                            f"build context archive: hard link {member.name!r} to "
                            f"{member.linkname!r}, which is not a file before it",
                            details={"member": member.name},
                        )
                    os.link(dest / source, target)
                    files.add(rel)
                elif member.isreg():
                    total += member.size
                    if total > max_bytes:
                        raise InvalidRequest(
                            f"build context too large: more than {max_bytes // 2**20} MiB unpacked",
                            details={"limit_bytes": max_bytes},
                        )
                    src = tar.extractfile(member)
                    assert src is not None
                    with src, target.open("xb") as out:
                        while block := src.read(1 << 20):
                            out.write(block)
                    os.chmod(target, stat.S_IMODE(member.mode) & 0o777)
                    files.add(rel)
                else:
                    raise InvalidRequest(
                        f"build context archive: {member.name!r} is a device, FIFO or "
                        "other special file",
                        details={"member": member.name},
                    )
            except InvalidRequest:
                raise
            except (OSError, tarfile.TarError) as exc:
                raise InvalidRequest(
                    f"build context archive: cannot unpack {member.name!r}: {exc}",
                    details={"member": member.name},
                ) from None
    return count
