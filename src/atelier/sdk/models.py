"""Typed views of the JSON objects of the REST API (``docs/api.md``).

Every model is a frozen dataclass with a ``from_json`` constructor; datetimes
are parsed into timezone-aware :class:`datetime.datetime` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias

__all__ = [
    "AutoStop",
    "CommandEvent",
    "CommandResult",
    "Exit",
    "FileEvent",
    "FileInfo",
    "GitAuth",
    "ProcessInfo",
    "SandboxInfo",
    "SandboxState",
    "SnapshotInfo",
    "Started",
    "Stderr",
    "Stdout",
    "WorkspaceInfo",
    "parse_datetime",
]


def parse_datetime(value: Any) -> datetime | None:
    """An ISO 8601 timestamp (``Z`` suffix allowed) or ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _str_dict(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


class SandboxState(StrEnum):
    """The lifecycle states of a sandbox (compare ``SandboxInfo.state`` with these)."""

    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    HIBERNATED = "hibernated"  # memory on disk, no RAM used; wakes on the next call
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"
    DELETED = "deleted"


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the server describes it."""

    id: str
    template: str
    runtime: str
    state: str
    vcpus: int
    memory_mib: int
    disk_mib: int
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    timeout: int | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    error: str | None = None
    runtime_info: dict[str, Any] = field(default_factory=dict)  # e.g. {"accel": "tcg"}
    workspace: WorkspaceInfo | None = None  # set for sandboxes made from a repository
    auto_stop: AutoStop | None = None  # the idle policy, if any
    snapshot_id: str | None = None  # the snapshot it was made from

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxInfo:
        return cls(
            id=str(data["id"]),
            template=str(data.get("template", "")),
            runtime=str(data.get("runtime", "")),
            state=str(data.get("state", "")),
            vcpus=int(data.get("vcpus", 0)),
            memory_mib=int(data.get("memory_mib", 0)),
            disk_mib=int(data.get("disk_mib", 0)),
            env=_str_dict(data.get("env")),
            labels=_str_dict(data.get("labels")),
            timeout=_opt_int(data.get("timeout")),
            expires_at=parse_datetime(data.get("expires_at")),
            created_at=parse_datetime(data.get("created_at")),
            started_at=parse_datetime(data.get("started_at")),
            error=None if data.get("error") is None else str(data["error"]),
            runtime_info=dict(data.get("runtime_info") or {}),
            workspace=WorkspaceInfo.from_json(data["workspace"]) if data.get("workspace") else None,
            auto_stop=AutoStop.from_json(data.get("auto_stop")),
            snapshot_id=data.get("snapshot_id"),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class AutoStop:
    """A sandbox's idle policy: after how many idle seconds it is paused, hibernated
    and deleted (each optional; each given one longer than the one before). Idle:
    no command, file or code call, no open terminal, SSH session, tunnel or preview
    request. A paused or hibernated sandbox wakes by itself on the next call."""

    pause_after: float | None = None
    hibernate_after: float | None = None
    delete_after: float | None = None

    def to_json(self) -> dict[str, float | None]:
        return {
            "pause_after": self.pause_after,
            "hibernate_after": self.hibernate_after,
            "delete_after": self.delete_after,
        }

    @classmethod
    def from_json(cls, data: Any) -> AutoStop | None:
        if not data:
            return None
        return cls(
            pause_after=_opt_float(data.get("pause_after")),
            hibernate_after=_opt_float(data.get("hibernate_after")),
            delete_after=_opt_float(data.get("delete_after")),
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """A saved sandbox: its files (and memory, if ``has_memory``), to start
    sandboxes from (``Sandbox.create(snapshot=...)``)."""

    id: str
    name: str | None
    sandbox_id: str
    template: str
    runtime: str
    has_memory: bool
    size_bytes: int  # on disk: its own layer and memory
    labels: dict[str, str] = field(default_factory=dict)
    parent_id: str | None = None
    template_version: int | None = None
    vcpus: int = 0
    memory_mib: int = 0
    disk_mib: int = 0
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotInfo:
        return cls(
            id=str(data["id"]),
            name=data.get("name"),
            sandbox_id=str(data.get("sandbox_id", "")),
            template=str(data.get("template", "")),
            runtime=str(data.get("runtime", "")),
            has_memory=bool(data.get("has_memory")),
            size_bytes=int(data.get("size_bytes", 0)),
            labels=_str_dict(data.get("labels")),
            parent_id=data.get("parent_id"),
            template_version=_opt_int(data.get("template_version")),
            vcpus=int(data.get("vcpus", 0)),
            memory_mib=int(data.get("memory_mib", 0)),
            disk_mib=int(data.get("disk_mib", 0)),
            created_at=parse_datetime(data.get("created_at")),
        )


@dataclass(frozen=True)
class WorkspaceInfo:
    """What a workspace was made from and how its setup went."""

    repo: str
    folder: str
    status: str  # setting_up | ready_pending | ready | failed
    ref: str | None = None
    commit: str | None = None
    branch: str | None = None
    devcontainer: str | None = None
    user: str | None = None
    wait_for: str | None = None
    lifecycle: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    forward_ports: list[str] = field(default_factory=list)
    prebuild: dict[str, str] | None = None  # the prebuild it started from (id, build, commit)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkspaceInfo:
        return cls(
            repo=str(data.get("repo", "")),
            folder=str(data.get("folder", "")),
            status=str(data.get("status", "")),
            ref=data.get("ref"),
            commit=data.get("commit"),
            branch=data.get("branch"),
            devcontainer=data.get("devcontainer"),
            user=data.get("user"),
            wait_for=data.get("wait_for"),
            lifecycle=[dict(step) for step in data.get("lifecycle") or []],
            warnings=[str(w) for w in data.get("warnings") or []],
            forward_ports=[str(p) for p in data.get("forward_ports") or []],
            prebuild=dict(data["prebuild"]) if data.get("prebuild") else None,
        )


@dataclass(frozen=True)
class GitAuth:
    """Credentials for one clone: an HTTPS token, or an SSH key. Sent to the
    server for that clone only; it never stores them or copies them into the sandbox."""

    token: str | None = None
    username: str | None = None
    ssh_private_key: str | None = None
    ssh_known_hosts: str | None = None

    def __repr__(self) -> str:
        kinds = [k for k in ("token", "ssh_private_key") if getattr(self, k)]
        return f"GitAuth(username={self.username!r}, secrets={kinds})"

    def to_json(self) -> dict[str, Any]:
        fields = ("token", "username", "ssh_private_key", "ssh_known_hosts")
        return {k: getattr(self, k) for k in fields if getattr(self, k) is not None}


@dataclass(frozen=True)
class ProcessInfo:
    """A process started through the commands API."""

    pid: int
    cmd: str | None = None
    argv: list[str] | None = None
    tag: str | None = None
    user: str | None = None
    cwd: str | None = None
    background: bool = False
    running: bool = False
    exit_code: int | None = None
    started_at: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessInfo:
        argv = data.get("argv")
        return cls(
            pid=int(data["pid"]),
            cmd=data.get("cmd"),
            argv=None if argv is None else [str(a) for a in argv],
            tag=data.get("tag"),
            user=data.get("user"),
            cwd=data.get("cwd"),
            background=bool(data.get("background", False)),
            running=bool(data.get("running", False)),
            exit_code=_opt_int(data.get("exit_code")),
            started_at=parse_datetime(data.get("started_at")),
        )


@dataclass(frozen=True)
class CommandResult:
    """The outcome of a finished command.

    A nonzero ``exit_code`` does not raise: check ``result.ok`` or
    ``result.exit_code`` yourself.
    """

    stdout: str
    stderr: str
    exit_code: int
    signal: str | int | None = None
    timed_out: bool = False
    pid: int | None = None

    @property
    def ok(self) -> bool:
        """``True`` when the command exited with status 0."""
        return self.exit_code == 0


@dataclass(frozen=True)
class Started:
    """The process started (first event of a command stream)."""

    pid: int


@dataclass(frozen=True)
class Stdout:
    """A piece of standard output (UTF-8 decoded, invalid bytes replaced)."""

    data: str


@dataclass(frozen=True)
class Stderr:
    """A piece of standard error (UTF-8 decoded, invalid bytes replaced)."""

    data: str


@dataclass(frozen=True)
class Exit:
    """The process ended (last event of a command stream)."""

    exit_code: int
    signal: str | int | None = None
    timed_out: bool = False


CommandEvent: TypeAlias = Started | Stdout | Stderr | Exit


@dataclass(frozen=True)
class FileInfo:
    """A file, directory or symlink inside a sandbox."""

    name: str
    path: str
    type: str
    size: int = 0
    mode: str = ""
    owner: str | None = None
    group: str | None = None
    modified_at: datetime | None = None
    symlink_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileInfo:
        return cls(
            name=str(data.get("name", "")),
            path=str(data["path"]),
            type=str(data.get("type", "other")),
            size=int(data.get("size") or 0),
            mode=str(data.get("mode") or ""),
            owner=data.get("owner"),
            group=data.get("group"),
            modified_at=parse_datetime(data.get("modified_at")),
            symlink_target=data.get("symlink_target"),
        )


@dataclass(frozen=True)
class FileEvent:
    """A change seen by ``files.watch``: ``type`` is create, modify, delete or rename."""

    type: str
    path: str
    is_dir: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEvent:
        return cls(type=str(data["type"]), path=str(data["path"]), is_dir=bool(data.get("is_dir")))
