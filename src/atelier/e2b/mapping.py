"""Pure translations between e2b's data shapes and Atelier's (no I/O).

e2b template ids name Atelier templates (``base`` is the server's default
template), e2b metadata is Atelier's labels, e2b's sandbox ``state`` is
``running`` for a running sandbox and ``paused`` for any other, and envd's
``EntryInfo``/``FilesystemEvent`` are built from the agent's file entries and
watch events. See docs/e2b.md for the full table.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import stat
from datetime import UTC, datetime, timedelta
from typing import Any

from ..core.agent_client import FileInfo, WatchEvent
from ..core.models import SandboxRecord, SandboxState
from ..errors import InvalidPath

__all__ = [
    "CLIENT_ID",
    "E2B_DEFAULT_TEMPLATE",
    "ENVD_VERSION",
    "entry_info",
    "event_type",
    "home_of",
    "listed_sandbox",
    "resolve_path",
    "rfc3339",
    "sandbox_created",
    "sandbox_detail",
    "template_for",
    "user_from_basic",
    "watch_event",
]

# The envd version we claim: high enough for stdin control, default user and
# octet-stream uploads; below 0.6.2, so the SDK itself refuses file metadata,
# watch entry info and network-mount watches (which we do not implement).
ENVD_VERSION = "0.5.7"
E2B_DEFAULT_TEMPLATE = "base"
CLIENT_ID = "atelier"
NO_EXPIRY = timedelta(days=365 * 100)  # what endAt says for a sandbox without a timeout
_FILE_TYPES = {
    "file": "FILE_TYPE_FILE",
    "dir": "FILE_TYPE_DIRECTORY",
    "symlink": "FILE_TYPE_SYMLINK",
}
_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}
_EVENT_TYPES = {
    "create": "EVENT_TYPE_CREATE",
    "modify": "EVENT_TYPE_WRITE",
    "delete": "EVENT_TYPE_REMOVE",
    "rename": "EVENT_TYPE_RENAME",
}


def template_for(template_id: str, default_template: str) -> str:
    """The Atelier template an e2b ``templateID`` names."""
    return default_template if template_id == E2B_DEFAULT_TEMPLATE else template_id


def rfc3339(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def e2b_state(state: SandboxState) -> str:
    return "running" if state == SandboxState.RUNNING else "paused"


def _common(rec: SandboxRecord) -> dict[str, Any]:
    started = rec.started_at or rec.created_at
    end = rec.expires_at or started + NO_EXPIRY
    return {
        "templateID": rec.template,
        "sandboxID": rec.id,
        "clientID": CLIENT_ID,
        "startedAt": rfc3339(started),
        "endAt": rfc3339(end),
        "envdVersion": ENVD_VERSION,
        "cpuCount": rec.vcpus,
        "memoryMB": rec.memory_mib,
        "diskSizeMB": rec.disk_mib,
        "state": e2b_state(rec.state),
        "metadata": dict(rec.labels),
    }


def sandbox_created(rec: SandboxRecord, access_token: str) -> dict[str, Any]:
    """The body of ``POST /sandboxes`` and ``POST /sandboxes/{id}/connect``.

    ``envdAccessToken`` is the caller's own API token: the SDK sends it back
    as ``X-Access-Token`` to envd, where it is authenticated like any token.
    """
    return {
        "templateID": rec.template,
        "sandboxID": rec.id,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": access_token,
    }


def sandbox_detail(rec: SandboxRecord, access_token: str) -> dict[str, Any]:
    return {**_common(rec), "envdAccessToken": access_token}


def listed_sandbox(rec: SandboxRecord) -> dict[str, Any]:
    return _common(rec)


# -- envd ------------------------------------------------------------------------------
def user_from_basic(header: str | None) -> str | None:
    """The user envd is asked to act as: ``Authorization: Basic base64("<user>:")``."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0]
    return user or None


def home_of(user: str | None) -> str:
    if user is None:
        user = "user"  # the agent's default user (agent/users.py)
    return "/root" if user == "root" else f"/home/{user}"


def resolve_path(path: str, user: str | None) -> str:
    """envd resolves relative paths against the user's home; the agent wants absolute ones."""
    if not path:
        raise InvalidPath("path must not be empty")
    if path.startswith("~"):
        path = home_of(user) + path[1:]
    if not path.startswith("/"):
        path = posixpath.join(home_of(user), path)
    return posixpath.normpath(path)


def _mode_bits(info: FileInfo) -> int:
    try:
        return int(info["mode"], 8)
    except (TypeError, ValueError):
        return 0


def entry_info(info: FileInfo) -> dict[str, Any]:
    """envd's ``EntryInfo`` (protobuf JSON) for an agent file entry."""
    bits = _mode_bits(info)
    entry: dict[str, Any] = {
        "name": info["name"],
        "type": _FILE_TYPES.get(info["type"], "FILE_TYPE_UNSPECIFIED"),
        "path": info["path"],
        "size": str(info["size"]),
        "mode": bits,
        "permissions": stat.filemode(_TYPE_BITS.get(info["type"], 0) | bits),
        "owner": info["owner"],
        "group": info["group"],
        "modifiedTime": info["modified_at"],
    }
    if info.get("symlink_target"):
        entry["symlinkTarget"] = info["symlink_target"]
    if info["type"] == "symlink":
        entry["isSymlink"] = True
    return entry


def event_type(event: WatchEvent) -> str:
    return _EVENT_TYPES.get(event["event"], "EVENT_TYPE_UNSPECIFIED")


def watch_event(event: WatchEvent, root: str) -> dict[str, Any]:
    """envd's ``FilesystemEvent``: ``name`` is the path relative to the watched directory."""
    name = (
        posixpath.relpath(event["path"], root) if event["path"].startswith(root) else event["path"]
    )
    return {"name": name, "type": event_type(event)}
