"""Request and response bodies of the REST API (see docs/api.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.models import SandboxRecord, SandboxState
from ..network import NetworkPolicy
from .lifecycle_schemas import AutoStopIn, AutoStopOut

__all__ = [
    "ChmodBody",
    "ClientEventIn",
    "CommandBody",
    "ErrorBody",
    "EventList",
    "EventOut",
    "ExistsOut",
    "FileInfoOut",
    "FileListOut",
    "GitCloneBody",
    "GitCloneOut",
    "GitCredentialsIn",
    "GitSyncBody",
    "GitSyncOut",
    "InfoOut",
    "MkdirBody",
    "MkdirOut",
    "NetworkIn",
    "ProcessListOut",
    "ProcessOut",
    "RenameBody",
    "SandboxCreate",
    "SandboxList",
    "SandboxOut",
    "SecretCreate",
    "SecretList",
    "SecretOut",
    "SignalBody",
    "TemplateList",
    "TemplateOut",
    "TimeoutBody",
    "TokenCreate",
    "TokenCreated",
    "TokenList",
    "TokenOut",
    "WorkspaceCreate",
    "WorkspaceOut",
    "WorkspaceStepOut",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class BandwidthIn(_Body):
    """Mbit/s each way (``egress``: from the sandbox; ``ingress``: to it); unset: unlimited."""

    egress_mbit: int | None = Field(None, ge=1)
    ingress_mbit: int | None = Field(None, ge=1)


class NetworkIn(_Body):
    """A sandbox's network: ``none`` (loopback only), ``egress`` (only ``allow``,
    minus ``deny``; CIDRs or domain names), ``open``. See docs/network.md."""

    mode: Literal["none", "egress", "open"] = "none"
    allow: list[str] = Field(default_factory=list, max_length=256)
    deny: list[str] = Field(default_factory=list, max_length=256)
    bandwidth_mbit: int | None = Field(None, ge=1)
    bandwidth: BandwidthIn | None = None

    def policy(self) -> NetworkPolicy:
        return NetworkPolicy(
            mode=self.mode,
            allow=tuple(self.allow),
            deny=tuple(self.deny),
            bandwidth_mbit=self.bandwidth_mbit,
            egress_mbit=self.bandwidth.egress_mbit if self.bandwidth else None,
            ingress_mbit=self.bandwidth.ingress_mbit if self.bandwidth else None,
        )


class SandboxCreate(_Body):
    template: str = Field("base", min_length=1, max_length=200)
    runtime: str | None = None
    vcpus: int = Field(1, ge=1)
    memory_mib: int = Field(512, ge=64)
    disk_mib: int = Field(2048, ge=64)
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    timeout: int | None = Field(300, gt=0, description="Seconds until auto-stop; null = never.")
    network: NetworkIn | None = Field(None, description="Default: the server's default mode")
    snapshot: str | None = Field(
        None,
        max_length=100,
        description="Start from this snapshot (id or name): its template, and its vcpus, "
        "memory and disk unless given",
    )
    auto_stop: AutoStopIn | None = Field(
        None, description="Idle policy; default: the server's (see docs/lifecycle.md)"
    )


class WorkspaceStepOut(BaseModel):
    hook: str
    origin: str = Field(description="devcontainer.json, or the id of the Feature it came from")
    status: str = Field(description="running | succeeded | failed")
    exit_code: int | None = None
    started_at: str
    finished_at: str | None = None


class WorkspaceOut(BaseModel):
    repo: str = Field(description="The repository URL (without credentials)")
    ref: str | None = None
    commit: str | None = None
    branch: str | None = None
    devcontainer: str | None = Field(None, description="The configuration used, in the repo")
    folder: str = Field(description="Where the working tree is in the sandbox")
    user: str | None = Field(None, description="Who commands run as by default")
    status: str = Field(
        description="setting_up | ready_pending (usable; steps after waitFor still run) "
        "| ready | failed"
    )
    wait_for: str | None = None
    lifecycle: list[WorkspaceStepOut] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    forward_ports: list[str] = Field(default_factory=list)
    prebuild: dict[str, str] | None = Field(
        None, description="The prebuild it started from: id, build, commit, snapshot"
    )


class SandboxOut(BaseModel):
    id: str
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
    started_at: datetime | None
    error: str | None
    runtime_info: dict[str, Any] = Field(
        default_factory=dict, description="How it runs, e.g. accel kvm|tcg (GET only)"
    )
    workspace: WorkspaceOut | None = Field(None, description="Set for workspaces")
    auto_stop: AutoStopOut | None = Field(None, description="Idle policy; null: none")
    snapshot_id: str | None = Field(None, description="The snapshot it was made from")

    @classmethod
    def of(cls, rec: SandboxRecord, runtime_info: dict[str, Any] | None = None) -> SandboxOut:
        return cls(
            id=rec.id,
            template=rec.template,
            runtime=rec.runtime,
            state=rec.state,
            vcpus=rec.vcpus,
            memory_mib=rec.memory_mib,
            disk_mib=rec.disk_mib,
            env=rec.env,
            labels=rec.labels,
            timeout=rec.timeout,
            expires_at=rec.expires_at,
            created_at=rec.created_at,
            started_at=rec.started_at,
            error=rec.error,
            runtime_info=runtime_info or {},
            workspace=WorkspaceOut.model_validate(rec.workspace) if rec.workspace else None,
            auto_stop=AutoStopOut.of(rec.auto_stop),
            snapshot_id=rec.snapshot_id,
        )


class SandboxList(BaseModel):
    sandboxes: list[SandboxOut]


class GitCredentialsIn(_Body):
    """Used for this clone only: never stored, logged or copied into the sandbox."""

    username: str | None = Field(None, max_length=200)
    token: str | None = Field(None, max_length=4096, description="HTTPS password or token")
    ssh_private_key: str | None = Field(None, max_length=65536)
    ssh_known_hosts: str | None = Field(
        None, max_length=65536, description="known_hosts lines; absent: trust on first use"
    )


class WorkspaceCreate(_Body):
    repo: str = Field(..., min_length=1, max_length=2048, examples=["https://host/org/app.git"])
    ref: str | None = Field(None, max_length=256, description="Branch, tag or commit")
    devcontainer: str | None = Field(
        None, max_length=1024, description="Which configuration, if the repo has several"
    )
    depth: int | None = Field(1, ge=1, description="Clone depth; null = full history")
    credentials: GitCredentialsIn | None = None
    secret: str | None = Field(
        None, max_length=100, description="A stored secret; default: yours for the repo's host"
    )
    local_env: dict[str, str] = Field(
        default_factory=dict, description="What ${localEnv:NAME} resolves to"
    )
    runtime: str | None = None
    vcpus: int = Field(1, ge=1)
    memory_mib: int = Field(1024, ge=64)
    disk_mib: int = Field(4096, ge=64)
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    timeout: int | None = Field(None, gt=0, description="Seconds until auto-stop; null = never.")
    network: NetworkIn | None = Field(None, description="Default: the server's default mode")
    auto_stop: AutoStopIn | None = Field(
        None, description="Idle policy; default: the server's (see docs/lifecycle.md)"
    )
    prebuild: bool = Field(
        True, description="Start from the branch's newest ready prebuild (docs/prebuilds.md)"
    )


class GitCloneBody(_Body):
    repo: str = Field(..., min_length=1, max_length=2048)
    path: str | None = Field(
        None, max_length=4096, description="Where in the sandbox; default /workspaces/<name>"
    )
    ref: str | None = Field(None, max_length=256)
    depth: int | None = Field(1, ge=1)
    credentials: GitCredentialsIn | None = None
    secret: str | None = Field(None, max_length=100)


class GitCloneOut(BaseModel):
    path: str
    commit: str
    branch: str | None = None


class GitSyncBody(_Body):
    """``git push`` / ``git pull`` done by the server for a repository in the sandbox."""

    path: str | None = Field(None, max_length=4096, description="Default: the workspace folder")
    remote: str = Field("origin", min_length=1, max_length=200)
    branch: str | None = Field(None, max_length=256, description="Default: the current branch")
    credentials: GitCredentialsIn | None = None
    secret: str | None = Field(None, max_length=100)


class GitSyncOut(BaseModel):
    remote: str
    branch: str
    commit: str = Field(description="The branch's commit after the push or pull")
    updated: bool = Field(description="Whether anything changed")


class SecretCreate(_Body):
    name: str = Field(..., min_length=1, max_length=100)
    kind: str = Field(..., description="git-token | ssh-key")
    value: str = Field(..., min_length=1, max_length=65536, description="Never returned")
    host: str | None = Field(None, max_length=260, description="The git host it is for")
    username: str | None = Field(None, max_length=200, description="HTTPS user name")
    known_hosts: str | None = Field(None, max_length=65536, description="For ssh-key")


class SecretOut(BaseModel):
    name: str
    kind: str
    host: str | None = None
    username: str | None = None
    created_at: str


class SecretList(BaseModel):
    secrets: list[SecretOut]


class TimeoutBody(_Body):
    timeout: int | None = Field(..., gt=0)


class CommandBody(_Body):
    cmd: str | None = None
    argv: list[str] | None = Field(None, min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    timeout: float | None = Field(None, gt=0)
    stdin: str | None = None
    keep_stdin_open: bool = False
    background: bool = False
    tag: str | None = None

    @model_validator(mode="after")
    def _one_of_cmd_argv(self) -> CommandBody:
        if (self.cmd is None) == (self.argv is None):
            raise ValueError("give exactly one of 'cmd' (a shell string) or 'argv' (a list)")
        return self


class SignalBody(_Body):
    signal: str | int = "SIGTERM"


class MkdirBody(_Body):
    path: str
    parents: bool = True
    mode: str = Field("0755", pattern=r"^0?[0-7]{3,4}$")
    user: str | None = None


class RenameBody(_Body):
    source: str
    destination: str


class ChmodBody(_Body):
    path: str
    mode: str = Field(..., pattern=r"^0?[0-7]{3,4}$")


class FileInfoOut(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: str = Field(description="Octal permission bits, e.g. 0644")
    owner: str
    group: str
    modified_at: datetime
    symlink_target: str | None


class FileListOut(BaseModel):
    entries: list[FileInfoOut]


class ExistsOut(BaseModel):
    exists: bool


class MkdirOut(BaseModel):
    created: bool
    entry: FileInfoOut


class ProcessOut(BaseModel):
    pid: int
    cmd: str | None
    argv: list[str] | None
    tag: str | None
    user: str
    cwd: str
    background: bool
    running: bool
    exit_code: int | None
    started_at: datetime


class ProcessListOut(BaseModel):
    processes: list[ProcessOut]


class EventOut(BaseModel):
    """One audit-trail entry: who did what to which sandbox, when."""

    model_config = ConfigDict(extra="allow")

    at: datetime
    kind: str
    sandbox_id: str | None
    actor: str | None = Field(description="Token id, or 'system' for the server itself")


class EventList(BaseModel):
    events: list[EventOut]


class ClientEventIn(_Body):
    """An entry a client adds to a sandbox's audit trail (stored as ``client.<kind>``)."""

    kind: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_.-]{0,39}$", examples=["mcp.tool_call"])
    detail: dict[str, Any] = Field(default_factory=dict, description="At most 8 KiB as JSON")


class TemplateOut(BaseModel):
    name: str
    runtime: str
    ready: bool
    size_bytes: int | None


class TemplateList(BaseModel):
    templates: list[TemplateOut]


class RuntimeOut(BaseModel):
    name: str
    available: bool
    reason: str


class PoolOut(BaseModel):
    template: str
    target: int
    ready: int


class InfoOut(BaseModel):
    version: str
    runtimes: list[RuntimeOut]
    templates: list[TemplateOut]
    pool: PoolOut


class TokenCreate(_Body):
    name: str = Field(..., min_length=1, max_length=200)
    admin: bool = False


class TokenOut(BaseModel):
    id: str
    name: str
    admin: bool
    created_at: datetime


class TokenCreated(TokenOut):
    token: str


class TokenList(BaseModel):
    tokens: list[TokenOut]


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
