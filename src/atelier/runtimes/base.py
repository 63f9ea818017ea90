"""The runtime contract: what every isolation backend implements.

A runtime turns a :class:`SandboxSpec` into an isolated machine running the
Atelier agent, and exposes the agent's host-side unix socket. It knows nothing
about the database, the API or the agent protocol.

Backend differences are data: :meth:`Runtime.capabilities` returns
:class:`Capability` flags and callers check them before calling an optional
verb. A runtime never fakes a capability; an optional verb it lacks raises
:class:`~atelier.errors.RuntimeUnavailable`.

Every verb is idempotent where that makes sense (``destroy`` of an unknown id
succeeds; ``stop`` of a stopped sandbox succeeds) so that the reconciler can
retry after a crash.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..network.policy import NetworkPolicy

__all__ = [
    "Capability",
    "Runtime",
    "RuntimeAvailability",
    "RuntimeState",
    "SandboxSpec",
]


class Capability(enum.Flag):
    NONE = 0
    PAUSE = enum.auto()  # pause/resume keeping memory
    MEMORY_SNAPSHOT = enum.auto()  # snapshot/restore memory + device state
    PERSISTENT_DISK = enum.auto()  # files survive stop/start
    HOT_RESIZE = enum.auto()  # change vcpus/memory of a running sandbox
    NETWORK = enum.auto()  # a network namespace per sandbox with an egress policy
    HIBERNATE = enum.auto()  # write memory + disk state to the data dir, free the RAM, wake later


class RuntimeState(enum.Enum):
    ABSENT = "absent"  # nothing on the host for this id
    CREATED = "created"  # disk/bundle prepared, nothing running
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"  # was running; processes gone, disk kept
    HIBERNATED = "hibernated"  # no process; memory image + disk on the host (wake restores)


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    sandbox_id: str
    template: str
    rootfs: Path  # the template's read-only root filesystem tree
    vcpus: int = 1
    memory_mib: int = 512
    disk_mib: int = 2048
    hostname: str = "sandbox"
    labels: dict[str, str] = field(default_factory=dict)
    # None: mode "none" (loopback only), as before networking existed
    network: NetworkPolicy | None = None
    # Extra read-only file layers stacked above ``rootfs``, topmost first (a
    # snapshot's ``layer/`` and its ancestors'); the sandbox's own changes go above them.
    layers: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class RuntimeAvailability:
    name: str
    available: bool
    reason: str  # why not, or a short description of how it runs here


@runtime_checkable
class Runtime(Protocol):
    """One isolation backend. All verbs are async and safe to retry."""

    name: str

    def capabilities(self) -> Capability: ...

    def availability(self) -> RuntimeAvailability: ...

    async def create(self, spec: SandboxSpec) -> None:
        """Prepare everything for the sandbox (disk layer, bundle); start nothing."""

    async def start(self, sandbox_id: str) -> None:
        """Boot the sandbox and its agent. Returns once the agent process runs;
        the caller waits for the agent socket to answer."""

    async def stop(self, sandbox_id: str) -> None:
        """Stop every process of the sandbox; keep its disk."""

    async def pause(self, sandbox_id: str) -> None: ...

    async def resume(self, sandbox_id: str) -> None: ...

    # -- optional verbs (Capability.HIBERNATE / MEMORY_SNAPSHOT): a runtime
    # without the capability raises RuntimeUnavailable; see docs/hibernate.md.
    async def hibernate(self, sandbox_id: str) -> None:
        """RUNNING/PAUSED -> HIBERNATED: memory and disk state written to the
        data dir, every process gone, RAM released. Idempotent when hibernated."""

    async def wake(self, sandbox_id: str) -> None:
        """HIBERNATED -> RUNNING with every process and its memory as before;
        returns once the agent process runs (the caller then connects to the
        agent socket as after ``start``, which on a hibernated sandbox wakes it
        too). ``stop`` of a hibernated sandbox discards the image (STOPPED)."""

    async def snapshot(self, sandbox_id: str, dest: Path, *, memory: bool = True) -> None:
        """Capture the running sandbox into the empty dir ``dest`` without
        stopping it (it is frozen while capturing): ``dest/layer/`` (its own
        file changes as an overlay layer), with ``memory`` ``dest/memory/``
        (a checkpoint image), and ``dest/snapshot.json``."""

    async def create_from_snapshot(self, spec: SandboxSpec, snapshot: Path) -> None:
        """Like ``create`` (``spec.layers`` already starts with ``snapshot/layer``);
        if ``snapshot/memory`` exists the first ``start`` restores it instead of
        booting. ``snapshot`` is shared read-only by many sandboxes."""

    async def destroy(self, sandbox_id: str) -> None:
        """Remove everything the sandbox has on the host. Unknown id: no-op."""

    async def state(self, sandbox_id: str) -> RuntimeState: ...

    async def list_ids(self) -> list[str]:
        """Ids of every sandbox that has anything on this host (for reconciling)."""

    def agent_socket(self, sandbox_id: str) -> Path:
        """Host path of the unix socket the sandbox's agent listens on."""

    def log_path(self, sandbox_id: str) -> Path:
        """Host path of the sandbox's runtime log (kept until destroy)."""

    def info(self, sandbox_id: str) -> dict[str, Any]:
        """How this sandbox runs, for display (e.g. ``{"accel": "tcg", "kernel_version": ...}``)."""

    async def aclose(self) -> None:
        """Stop the runtime's own background work (server shutdown); sandboxes keep running."""
