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
    "SSHKeyRow",
    "SandboxLabelRow",
    "SandboxRow",
    "SecretRow",
    "TokenRow",
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
