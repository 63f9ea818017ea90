"""Request and response bodies of hibernation, idle auto-stop, snapshots and fork
(see docs/lifecycle.md)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from ..core.models import AutoStop, SnapshotRecord

__all__ = [
    "AutoStopIn",
    "AutoStopOut",
    "ForkBody",
    "SnapshotCreate",
    "SnapshotList",
    "SnapshotOut",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoStopIn(_Body):
    """Idle auto-stop policy, in seconds of inactivity; each step optional, and each
    given step longer than the one before (pause < hibernate < delete)."""

    pause_after: float | None = Field(None, gt=0, description="Pause after this many idle seconds")
    hibernate_after: float | None = Field(
        None, gt=0, description="Hibernate (memory to disk, RAM freed) after this many"
    )
    delete_after: float | None = Field(None, gt=0, description="Delete after this many")

    def policy(self) -> AutoStop:
        return AutoStop(self.pause_after, self.hibernate_after, self.delete_after)


class AutoStopOut(BaseModel):
    pause_after: float | None = None
    hibernate_after: float | None = None
    delete_after: float | None = None

    @classmethod
    def of(cls, policy: AutoStop | None) -> AutoStopOut | None:
        return None if policy is None else cls(**policy.to_json())


class SnapshotCreate(_Body):
    name: str | None = Field(
        None, min_length=1, max_length=100, description="Unique among your snapshots"
    )
    labels: dict[str, str] = Field(default_factory=dict)
    memory: bool | None = Field(
        None, description="Save memory too (running processes); null: if the runtime can"
    )


class SnapshotOut(BaseModel):
    id: str
    name: str | None
    sandbox_id: str = Field(description="The sandbox it was taken from")
    template: str
    template_version: int | None
    runtime: str
    labels: dict[str, str]
    has_memory: bool
    parent_id: str | None = Field(description="The snapshot its source was made from")
    vcpus: int
    memory_mib: int
    disk_mib: int
    size_bytes: int = Field(description="Bytes on disk of its own layer and memory")
    created_at: datetime

    @classmethod
    def of(cls, rec: SnapshotRecord) -> SnapshotOut:
        return cls(
            id=rec.id,
            name=rec.name,
            sandbox_id=rec.sandbox_id,
            template=rec.template,
            template_version=rec.template_version,
            runtime=rec.runtime,
            labels=rec.labels,
            has_memory=rec.has_memory,
            parent_id=rec.parent_id,
            vcpus=rec.vcpus,
            memory_mib=rec.memory_mib,
            disk_mib=rec.disk_mib,
            size_bytes=rec.size_bytes,
            created_at=rec.created_at,
        )


class SnapshotList(BaseModel):
    snapshots: list[SnapshotOut]


class ForkBody(_Body):
    count: int = Field(1, ge=1, le=16, description="How many copies")
