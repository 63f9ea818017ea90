"""What a caller asks for when making a workspace."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...git import GitCredentials
from ...network import NetworkPolicy

__all__ = ["WorkspaceRequest"]


@dataclass(frozen=True, slots=True)
class WorkspaceRequest:
    """A workspace from ``repo`` at ``ref`` (its default branch if None).

    ``devcontainer`` picks one configuration when the repository has several
    (a path relative to the repository, or the ``<name>`` of
    ``.devcontainer/<name>/``). ``local_env`` is what ``${localEnv:...}``
    resolves to (the caller's environment, as the CLI sends it). Resources
    are raised to the configuration's ``hostRequirements``. ``prebuild``:
    start from the newest ready prebuild of the repository's branch when there
    is one (``False``: always clone and run every step).
    """

    repo: str
    ref: str | None = None
    devcontainer: str | None = None
    depth: int | None = 1
    credentials: GitCredentials | None = None
    secret: str | None = None  # a stored secret's name (else: the owner's secret for the host)
    local_env: dict[str, str] = field(default_factory=dict)
    runtime: str | None = None
    vcpus: int = 1
    memory_mib: int = 1024
    disk_mib: int = 4096
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    timeout: int | None = None
    network: NetworkPolicy | None = None
    prebuild: bool = True
