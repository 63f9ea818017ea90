"""Domain model of the control plane: sandboxes, their lifecycle, tokens.

The lifecycle is an explicit state machine; :func:`check_transition` is the
only place that decides what may follow what, and illegal moves raise
:class:`~atelier.errors.InvalidStateTransition` (HTTP 409).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import InvalidStateTransition
from ..network import NetworkPolicy

__all__ = [
    "TRANSITIONS",
    "AutoStop",
    "CreateRequest",
    "SandboxRecord",
    "SandboxState",
    "SnapshotRecord",
    "TokenRecord",
    "check_transition",
    "require_running",
]


class SandboxState(enum.StrEnum):
    CREATING = "creating"  # disk and bundle being prepared, first boot
    STARTING = "starting"  # booting again after a stop
    RUNNING = "running"
    PAUSED = "paused"  # frozen with its memory; costs no CPU
    HIBERNATED = "hibernated"  # memory saved to disk; costs no CPU or RAM; wakes on use
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"
    DELETED = "deleted"


S = SandboxState
TRANSITIONS: dict[SandboxState, frozenset[SandboxState]] = {
    S.CREATING: frozenset({S.RUNNING, S.ERROR, S.DELETED}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPED, S.ERROR, S.DELETED}),
    S.RUNNING: frozenset({S.PAUSED, S.HIBERNATED, S.STOPPING, S.STOPPED, S.ERROR, S.DELETED}),
    S.PAUSED: frozenset({S.RUNNING, S.HIBERNATED, S.STOPPING, S.ERROR, S.DELETED}),
    S.HIBERNATED: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.ERROR, S.DELETED}),
    S.STOPPING: frozenset({S.STOPPED, S.ERROR, S.DELETED}),
    S.STOPPED: frozenset({S.STARTING, S.ERROR, S.DELETED}),
    S.ERROR: frozenset({S.STARTING, S.STOPPED, S.DELETED}),
    S.DELETED: frozenset(),
}

_VERBS = {
    S.PAUSED: "pause",
    S.HIBERNATED: "hibernate",
    S.STARTING: "start",
    S.STOPPING: "stop",
    S.DELETED: "delete",
}


_HINTS = {
    S.STOPPED: "start it first",
    S.ERROR: "start it again first",
    S.PAUSED: "resume it first",
    S.HIBERNATED: "wake it first",
    S.CREATING: "wait until it is running",
    S.STARTING: "wait until it is running",
    S.STOPPING: "it is stopping",
}


def require_running(sandbox_id: str, current: SandboxState) -> None:
    """Raise a 409 that says what to do unless the sandbox is running."""
    if current != S.RUNNING:
        hint = _HINTS.get(current)
        raise InvalidStateTransition(
            f"sandbox {sandbox_id} is {current.value}" + (f": {hint}" if hint else ""),
            details={"state": current.value},
        )


def check_transition(
    sandbox_id: str, current: SandboxState, target: SandboxState, verb: str | None = None
) -> None:
    """Raise :class:`InvalidStateTransition` unless ``current → target`` is legal."""
    if target not in TRANSITIONS[current]:
        verb = verb or _VERBS.get(target, f"move to {target.value}")
        raise InvalidStateTransition(
            f"cannot {verb} sandbox {sandbox_id}: it is {current.value}",
            details={"state": current.value, "target": target.value},
        )


@dataclass(frozen=True, slots=True)
class CreateRequest:
    template: str
    runtime: str | None
    vcpus: int
    memory_mib: int
    disk_mib: int
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    timeout: int | None = 300
    network: NetworkPolicy | None = None  # None: the server's default mode
    snapshot: str | None = None  # start from this snapshot (id or name): core/snapshots.py
    auto_stop: AutoStop | None = None  # None: the server's default policy


@dataclass(frozen=True, slots=True)
class AutoStop:
    """Idle auto-stop policy of a sandbox (seconds of inactivity; each optional):
    pause after ``pause_after``, hibernate after ``hibernate_after``, delete after
    ``delete_after``. Applied by :mod:`atelier.core.idle`; see docs/lifecycle.md."""

    pause_after: float | None = None
    hibernate_after: float | None = None
    delete_after: float | None = None

    @property
    def empty(self) -> bool:
        steps = (self.pause_after, self.hibernate_after, self.delete_after)
        return all(step is None for step in steps)

    def to_json(self) -> dict[str, float | None]:
        return {
            "pause_after": self.pause_after,
            "hibernate_after": self.hibernate_after,
            "delete_after": self.delete_after,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> AutoStop | None:
        if not data:
            return None
        policy = cls(
            pause_after=_seconds(data.get("pause_after")),
            hibernate_after=_seconds(data.get("hibernate_after")),
            delete_after=_seconds(data.get("delete_after")),
        )
        return None if policy.empty else policy


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(slots=True)
class SandboxRecord:
    id: str
    owner: str | None
    template: str
    runtime: str
    state: SandboxState
    vcpus: int
    memory_mib: int
    disk_mib: int
    env: dict[str, str]
    labels: dict[str, str]
    timeout: int | None
    expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None = None
    error: str | None = None
    pooled: bool = False
    workspace: dict[str, Any] | None = None  # a workspace's repository, folder, user, setup
    auto_stop: AutoStop | None = None  # idle policy (core/idle.py); None: never
    snapshot_id: str | None = None  # the snapshot it was made from (core/snapshots.py)
    last_active_at: datetime | None = None  # last use, as the idle tracker last saved it

    @property
    def default_user(self) -> str | None:
        """Who runs commands when a request names nobody (a workspace's remoteUser)."""
        user = (self.workspace or {}).get("user")
        return user if isinstance(user, str) and user else None

    @property
    def default_cwd(self) -> str | None:
        """Where commands run when a request says nothing (a workspace's folder)."""
        folder = (self.workspace or {}).get("folder")
        return folder if isinstance(folder, str) and folder else None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    admin: bool
    created_at: datetime


@dataclass(slots=True)
class SnapshotRecord:
    """A saved sandbox (its file changes as a layer, optionally its memory),
    stored in ``<data_dir>/snapshots/<id>/``: see core/snapshots.py."""

    id: str
    name: str | None
    owner: str | None
    sandbox_id: str  # the sandbox it was taken from (may since be deleted)
    template: str
    runtime: str
    labels: dict[str, str]
    has_memory: bool
    size_bytes: int  # bytes on disk of its own layer + memory (parents' not counted)
    created_at: datetime
    template_version: int | None = None  # pinned: kept while the snapshot exists
    parent_id: str | None = None  # the snapshot the source sandbox was made from
    vcpus: int = 1
    memory_mib: int = 512
    disk_mib: int = 2048
    env: dict[str, str] = field(default_factory=dict)
    state: str = "ready"  # creating | ready
    internal: bool = False  # a fork's: hidden, removed once no sandbox uses it
