"""Request and response bodies of the prebuild and webhook routes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BuildList",
    "BuildOut",
    "PrebuildCreate",
    "PrebuildList",
    "PrebuildOut",
    "PrebuildRunOut",
    "WebhookOut",
]


class PrebuildCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(..., min_length=1, max_length=2048, examples=["https://host/org/app.git"])
    branch: str = Field(..., min_length=1, max_length=256)
    devcontainer: str | None = Field(None, max_length=1024)
    git_secret: str | None = Field(
        None, max_length=100, description="Your stored secret to clone and poll with"
    )
    env_secrets: dict[str, str] = Field(
        default_factory=dict,
        description="ENV_NAME -> your stored secret: given to onCreateCommand and "
        "updateContentCommand only",
    )
    keep: int = Field(3, ge=1, le=50, description="Ready prebuilds kept (retention)")
    webhook_provider: str | None = Field(
        None, description="github | gitlab | gitea | forgejo | bitbucket"
    )
    webhook_secret: str | None = Field(
        None, min_length=1, max_length=1024, description="The webhook's secret (never shown)"
    )
    poll_interval: int | None = Field(
        None, ge=1, description="Seconds between polls of the remote; null: no polling"
    )
    runtime: str | None = None
    vcpus: int = Field(1, ge=1)
    memory_mib: int = Field(1024, ge=64)
    disk_mib: int = Field(4096, ge=64)


class PrebuildOut(BaseModel):
    id: str
    repo: str
    branch: str
    devcontainer: str | None = None
    git_secret: str | None = None
    env_secrets: dict[str, str] = Field(default_factory=dict)
    keep: int
    webhook_provider: str | None = None
    has_webhook_secret: bool
    webhook_path: str | None = Field(None, description="Where the git host sends pushes")
    poll_interval: int | None = None
    runtime: str | None = None
    vcpus: int
    memory_mib: int
    disk_mib: int
    created_at: str
    last_polled_at: str | None = None
    latest_ready: BuildOut | None = Field(None, description="What new workspaces start from")


class PrebuildList(BaseModel):
    prebuilds: list[PrebuildOut]


class BuildOut(BaseModel):
    id: str
    prebuild_id: str
    commit: str
    state: str = Field(description="queued | running | ready | failed | expired")
    trigger: str = Field(description="manual | poll | webhook:<provider>")
    operation_id: str | None = None
    snapshot_id: str | None = None
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None


class BuildList(BaseModel):
    builds: list[BuildOut]


class PrebuildRunOut(BaseModel):
    build: BuildOut
    created: bool = Field(description="False: this commit had a build already")


class WebhookOut(BaseModel):
    status: str = Field(description="queued | duplicate | ignored")
    reason: str
    build: BuildOut | None = None
