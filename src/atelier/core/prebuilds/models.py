"""What a prebuild is: a configuration (repository, branch, triggers, retention)
and its builds (one per commit, each ending in a snapshot or a failure)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["PROVIDERS", "BuildState", "PrebuildBuild", "PrebuildConfig"]

# the webhook senders Atelier can verify (see webhooks.py)
PROVIDERS = ("github", "gitlab", "gitea", "forgejo", "bitbucket")


class BuildState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"  # its snapshot can start workspaces
    FAILED = "failed"
    EXPIRED = "expired"  # dropped by the retention policy; snapshot deleted (or pending)


@dataclass(frozen=True, slots=True)
class PrebuildConfig:
    """A repository + branch (+ devcontainer path) kept prebuilt.

    ``git_secret``: the owner's stored secret to clone and poll with (None: the
    owner's secret for the host, if any). ``env_secrets``: environment variable
    → stored secret of the owner, given to ``onCreateCommand`` and
    ``updateContentCommand`` only (never a workspace user's secrets).
    ``webhook_secret`` is kept encrypted (``webhook_secret_enc``) and never shown.
    """

    id: str
    owner: str
    repo: str  # as given, without credentials (redacted form)
    branch: str
    devcontainer: str | None
    git_secret: str | None
    env_secrets: dict[str, str]
    keep: int  # retention: the last N ready builds are kept
    webhook_provider: str | None
    webhook_secret_enc: str | None
    poll_interval: int | None  # seconds; None: no polling
    runtime: str | None
    vcpus: int
    memory_mib: int
    disk_mib: int
    created_at: datetime
    last_polled_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "repo": self.repo,
            "branch": self.branch,
            "devcontainer": self.devcontainer,
            "git_secret": self.git_secret,
            "env_secrets": dict(self.env_secrets),
            "keep": self.keep,
            "webhook_provider": self.webhook_provider,
            "has_webhook_secret": self.webhook_secret_enc is not None,
            "poll_interval": self.poll_interval,
            "runtime": self.runtime,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "disk_mib": self.disk_mib,
            "created_at": self.created_at.isoformat(),
            "last_polled_at": self.last_polled_at.isoformat() if self.last_polled_at else None,
        }


@dataclass(frozen=True, slots=True)
class PrebuildBuild:
    """One build of one commit. ``workspace`` is what a workspace started from
    it needs (folder, user, env, template, the later lifecycle steps)."""

    id: str
    prebuild_id: str
    commit: str
    state: BuildState
    trigger: str  # manual | poll | webhook:<provider>
    operation_id: str | None
    snapshot_id: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    workspace: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        seconds = None
        if self.started_at and self.finished_at:
            seconds = round((self.finished_at - self.started_at).total_seconds(), 3)
        return {
            "id": self.id,
            "prebuild_id": self.prebuild_id,
            "commit": self.commit,
            "state": self.state.value,
            "trigger": self.trigger,
            "operation_id": self.operation_id,
            "snapshot_id": self.snapshot_id,
            "error": self.error,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_seconds": seconds,
        }
