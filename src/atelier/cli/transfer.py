"""``atelier cp``: copy files between this machine and sandboxes, streamed.

An argument ``SB:/path`` names a path in sandbox ``SB`` (the part before the
colon has no ``/``); anything else is a local path (write ``./a:b`` for a
local name with a colon); ``-`` is stdin or stdout.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from atelier.cli.context import CliState
from atelier.cli.output import print_warning
from atelier.errors import FileNotFound, InvalidPath, InvalidRequest, IsADirectory
from atelier.sdk import Files

__all__ = ["Endpoint", "copy", "parse_endpoint"]

_REMOTE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*):(.*)$")


@dataclass(frozen=True)
class Endpoint:
    sandbox: str | None
    path: str

    def __str__(self) -> str:
        return f"{self.sandbox}:{self.path}" if self.sandbox else self.path


def parse_endpoint(spec: str) -> Endpoint:
    match = _REMOTE.match(spec)
    if not match:
        return Endpoint(None, spec)
    sandbox, path = match.groups()
    if not path.startswith("/"):
        raise InvalidPath(f"{spec!r}: give an absolute path after '{sandbox}:'")
    return Endpoint(sandbox, path)


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) or "root"


def _remote_target(files: Files, path: str, name: str) -> str:
    """``path`` itself, or ``path/name`` when ``path`` is (or ends like) a directory."""
    if path.endswith("/"):
        return path + name
    try:
        if files.stat(path).is_dir:
            return posixpath.join(path, name)
    except FileNotFound:
        pass
    return path


def _local_target(path: str, name: str) -> Path:
    local = Path(path)
    return local / name if path.endswith(os.sep) or local.is_dir() else local


def _upload_tree(files: Files, root: Path, target: str) -> None:
    files.make_dir(target)
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        base = target if rel == "." else posixpath.join(target, *Path(rel).parts)
        for name in sorted(dirnames):
            files.make_dir(posixpath.join(base, name))
        for name in sorted(filenames):
            local = Path(dirpath, name)
            files.upload(local, posixpath.join(base, name), mode=local.stat().st_mode & 0o777)


def _download_tree(files: Files, remote: str, local: Path) -> None:
    local.mkdir(exist_ok=True)
    for entry in files.list(remote):
        if not entry.name or "/" in entry.name or entry.name in (".", ".."):
            print_warning(f"skipping suspicious entry name {entry.name!r} in {remote}")
            continue
        if entry.is_dir:
            _download_tree(files, entry.path, local / entry.name)
        elif entry.is_file:
            files.download(entry.path, local / entry.name)
        else:
            print_warning(f"skipping {entry.path} ({entry.type})")


def _to_sandbox(state: CliState, src: Endpoint, dst: Endpoint, recursive: bool) -> None:
    assert dst.sandbox is not None
    local = Path(src.path)
    if src.path != "-":
        if not local.exists():
            raise FileNotFound(f"local file {src.path} does not exist")
        if local.is_dir() and not recursive:
            raise IsADirectory(f"{src.path} is a directory (use cp -r)")
    with state.sandbox(dst.sandbox) as sb:
        if src.path == "-":
            sb.files.write(dst.path, sys.stdin.buffer)
            return
        target = _remote_target(sb.files, dst.path, local.name)
        if local.is_dir():
            _upload_tree(sb.files, local, target)
        else:
            sb.files.upload(local, target, mode=local.stat().st_mode & 0o777)


def _from_sandbox(state: CliState, src: Endpoint, dst: Endpoint, recursive: bool) -> None:
    assert src.sandbox is not None
    with state.sandbox(src.sandbox) as sb:
        info = sb.files.stat(src.path)
        if info.is_dir and not recursive:
            raise IsADirectory(f"{src} is a directory (use cp -r)")
        if dst.path == "-":
            if info.is_dir:
                raise IsADirectory(f"cannot write directory {src} to stdout")
            out = sys.stdout.buffer
            with sb.files.read_stream(src.path) as chunks:
                for chunk in chunks:
                    out.write(chunk)
            out.flush()
            return
        target = _local_target(dst.path, info.name or _basename(src.path))
        if not target.parent.is_dir():
            raise FileNotFound(f"local directory {target.parent} does not exist")
        if info.is_dir:
            _download_tree(sb.files, src.path, target)
        else:
            sb.files.download(src.path, target)


def _between_sandboxes(state: CliState, src: Endpoint, dst: Endpoint) -> None:
    assert src.sandbox is not None and dst.sandbox is not None
    with state.sandbox(src.sandbox) as a, state.sandbox(dst.sandbox) as b:
        info = a.files.stat(src.path)
        if info.is_dir:
            raise IsADirectory(f"{src} is a directory: copy directories through this machine")
        target = _remote_target(b.files, dst.path, info.name or _basename(src.path))
        with a.files.read_stream(src.path) as chunks:
            b.files.write(target, chunks, mode=info.mode or None)


def copy(state: CliState, source: str, destination: str, recursive: bool = False) -> None:
    src, dst = parse_endpoint(source), parse_endpoint(destination)
    if src.sandbox is None and dst.sandbox is None:
        raise InvalidRequest("one side of cp must be in a sandbox: SB:/path")
    if src.sandbox is None:
        _to_sandbox(state, src, dst, recursive)
    elif dst.sandbox is None:
        _from_sandbox(state, src, dst, recursive)
    else:
        _between_sandboxes(state, src, dst)
