"""SQLAlchemy table definitions. Portable across SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "EventRow",
    "OperationRow",
    "PrebuildBuildRow",
    "PrebuildRow",
    "SSHKeyRow",
    "SandboxLabelRow",
    "SandboxRow",
    "SecretRow",
    "SnapshotLabelRow",
    "SnapshotRow",
    "TokenRow",
    "WebhookDeliveryRow",
]


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class TokenRow(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class SandboxRow(Base):
    __tablename__ = "sandboxes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(32), index=True)
    template: Mapped[str] = mapped_column(String(200))
    runtime: Mapped[str] = mapped_column(String(50))
    state: Mapped[str] = mapped_column(String(20), index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int] = mapped_column(Integer)
    env: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timeout: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    pooled: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # set for workspaces (sandboxes made from a git repository): see core/workspaces
    workspace: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # idle policy {pause_after, hibernate_after, delete_after} (core/idle.py)
    auto_stop: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    last_active_at: Mapped[datetime | None]
    # the snapshot it was made from, which it keeps in use (core/snapshots.py)
    snapshot_id: Mapped[str | None] = mapped_column(String(32), index=True)

    labels: Mapped[list[SandboxLabelRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )


class SandboxLabelRow(Base):
    __tablename__ = "sandbox_labels"
    __table_args__ = (Index("ix_sandbox_labels_kv", "key", "value"),)

    sandbox_id: Mapped[str] = mapped_column(
        ForeignKey("sandboxes.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))


class EventRow(Base):
    """Audit trail: every lifecycle change and who asked for it."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    sandbox_id: Mapped[str | None] = mapped_column(String(32), index=True)
    actor: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(50))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class OperationRow(Base):
    """A long-running job (a template build or pull): see ``atelier.operations``."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(200), index=True)
    state: Mapped[str] = mapped_column(String(20), index=True)
    owner: Mapped[str | None] = mapped_column(String(32), index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class SecretRow(Base):
    """A user's stored credential (a git host token or SSH key), encrypted at rest:
    see ``core/secrets.py``. The value is never returned by the API."""

    __tablename__ = "secrets"
    __table_args__ = (Index("ix_secrets_owner_name", "owner", "name", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))  # git-token | ssh-key
    host: Mapped[str | None] = mapped_column(String(255))  # the git host it is for, if any
    username: Mapped[str | None] = mapped_column(String(200))
    known_hosts: Mapped[str | None] = mapped_column(Text)  # not secret: SSH host keys
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class SSHKeyRow(Base):
    """A public key registered by an API token for the SSH gateway (``atelier.sshgw``):
    a login with it may reach the sandboxes that token may reach."""

    __tablename__ = "ssh_keys"
    __table_args__ = (
        Index("ix_ssh_keys_owner_name", "owner", "name", unique=True),
        Index("ix_ssh_keys_owner_fingerprint", "owner", "fingerprint", unique=True),
        Index("ix_ssh_keys_fingerprint", "fingerprint"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(32))  # the token id
    name: Mapped[str] = mapped_column(String(100))
    public_key: Mapped[str] = mapped_column(Text)  # OpenSSH one-line form, no comment
    fingerprint: Mapped[str] = mapped_column(String(100))  # "SHA256:..."
    created_at: Mapped[datetime]


class SnapshotRow(Base):
    """A saved sandbox: its file layer (and memory) under ``<data_dir>/snapshots/<id>``;
    see ``core/snapshots.py``. ``parent_id``'s layers lie below its own."""

    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_owner_name", "owner", "name", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100))
    owner: Mapped[str | None] = mapped_column(String(32), index=True)
    sandbox_id: Mapped[str] = mapped_column(String(32))
    template: Mapped[str] = mapped_column(String(200), index=True)
    template_version: Mapped[int | None] = mapped_column(Integer)
    runtime: Mapped[str] = mapped_column(String(50))
    has_memory: Mapped[bool] = mapped_column(Boolean, default=False)
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int] = mapped_column(Integer)
    env: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(20))
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]

    labels: Mapped[list[SnapshotLabelRow]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )


class SnapshotLabelRow(Base):
    __tablename__ = "snapshot_labels"
    __table_args__ = (Index("ix_snapshot_labels_kv", "key", "value"),)

    snapshot_id: Mapped[str] = mapped_column(
        ForeignKey("snapshots.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))


class PrebuildRow(Base):
    """A repository + branch kept prebuilt (see ``core/prebuilds``)."""

    __tablename__ = "prebuilds"
    __table_args__ = (Index("ix_prebuilds_owner_repo", "owner", "repo", "branch"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(32))
    repo: Mapped[str] = mapped_column(String(2048))
    branch: Mapped[str] = mapped_column(String(256))
    devcontainer: Mapped[str | None] = mapped_column(String(1024))
    git_secret: Mapped[str | None] = mapped_column(String(100))
    env_secrets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    keep: Mapped[int] = mapped_column(Integer)
    webhook_provider: Mapped[str | None] = mapped_column(String(20))
    webhook_secret: Mapped[str | None] = mapped_column(Text)  # Fernet ciphertext
    poll_interval: Mapped[int | None] = mapped_column(Integer)
    runtime: Mapped[str | None] = mapped_column(String(50))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    last_polled_at: Mapped[datetime | None]


class PrebuildBuildRow(Base):
    """One prebuild of one commit; (prebuild, commit) is unique: once per commit."""

    __tablename__ = "prebuild_builds"
    __table_args__ = (
        Index("ix_prebuild_builds_commit", "prebuild_id", "commit", unique=True),
        Index("ix_prebuild_builds_state", "prebuild_id", "state"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prebuild_id: Mapped[str] = mapped_column(ForeignKey("prebuilds.id", ondelete="CASCADE"))
    commit: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20))
    trigger: Mapped[str] = mapped_column(String(50))
    operation_id: Mapped[str | None] = mapped_column(String(32))
    snapshot_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    workspace: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class WebhookDeliveryRow(Base):
    """Delivery ids a prebuild's webhook has received: a second one is a replay."""

    __tablename__ = "webhook_deliveries"

    prebuild_id: Mapped[str] = mapped_column(
        ForeignKey("prebuilds.id", ondelete="CASCADE"), primary_key=True
    )
    delivery_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    received_at: Mapped[datetime]
