"""Who a command runs as: passwd/group lookups (cached until the files change)."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from typing import Any

from .common import AgentError

__all__ = [
    "DEFAULT_PATH",
    "Identity",
    "base_env",
    "group_name",
    "refresh",
    "resolve_user",
    "user_name",
]

DEFAULT_USER = "user"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WATCHED_FILES = ("/etc/passwd", "/etc/group")


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str


_cache: dict[str, Identity] = {}
_names: dict[tuple[str, int], str] = {}
_stamp: tuple[tuple[int, int], ...] = ()


def refresh() -> None:
    """Drop cached lookups if /etc/passwd or /etc/group changed."""
    global _stamp
    stamp = []
    for path in _WATCHED_FILES:
        try:
            st = os.stat(path)
            stamp.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append((0, 0))
    current = tuple(stamp)
    if current != _stamp:
        _cache.clear()
        _names.clear()
        _stamp = current


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        if name.isdigit():
            return pwd.getpwuid(int(name))
        return pwd.getpwnam(name)
    except KeyError:
        return None


def resolve_user(name: Any) -> Identity:
    """The identity for ``name`` (default: ``user`` if it exists, else ``root``)."""
    if name is not None and (not isinstance(name, str) or not name):
        raise AgentError("invalid_request", f"invalid user {name!r}")
    refresh()
    key = name if name is not None else ""
    cached = _cache.get(key)
    if cached is not None:
        return cached
    entry = _lookup(name) if name is not None else (_lookup(DEFAULT_USER) or _lookup("root"))
    if entry is None:
        if name is None:  # no passwd at all (distroless): be root
            ident = Identity("root", 0, 0, (0,), "/root", "/bin/sh")
            _cache[key] = ident
            return ident
        raise AgentError("invalid_request", f"unknown user {name!r}")
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    ident = Identity(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=groups,
        home=entry.pw_dir or "/",
        shell=entry.pw_shell or "/bin/sh",
    )
    _cache[key] = ident
    return ident


def base_env(ident: Identity, extra: Any) -> dict[str, str]:
    """The base environment of a command overlaid with the request's ``env``."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": ident.home,
        "USER": ident.name,
        "LOGNAME": ident.name,
        "SHELL": ident.shell,
        "LANG": "C.UTF-8",
    }
    if extra is None:
        return env
    if not isinstance(extra, dict):
        raise AgentError("invalid_request", "env must be an object of strings")
    for key, value in extra.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise AgentError("invalid_request", f"invalid environment variable name {key!r}")
        if not isinstance(value, str) or "\0" in value:
            raise AgentError("invalid_request", f"environment variable {key} must be a string")
        env[key] = value
    return env


def user_name(uid: int) -> str:
    """Name of ``uid`` (its number as text if unknown); cached until :func:`refresh`."""
    key = ("u", uid)
    name = _names.get(key)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        _names[key] = name
    return name


def group_name(gid: int) -> str:
    key = ("g", gid)
    name = _names.get(key)
    if name is None:
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = str(gid)
        _names[key] = name
    return name
