"""Workspaces and prebuilds: what the prebuild builder asks of a workspace,
and what a new workspace needs to start from a finished prebuild.

A prebuild (``core/prebuilds``) makes a workspace in *prebuild mode*: the
repository is cloned at one commit and put on its branch, and only
``onCreateCommand`` and ``updateContentCommand`` run, with the prebuild's
repository-scoped secrets in their environment (never stored in the sandbox
record). The steps that did not run are kept with the build
(:func:`pending_steps`), so a workspace started from its snapshot runs
``postCreateCommand`` and the rest without reading the repository again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ...errors import RuntimeFailure
from ...workspaces import LifecycleHook, LifecycleStep
from ..auth import Principal
from .lifecycle_runner import step_from_json, step_to_json
from .request import WorkspaceRequest

__all__ = [
    "PREBUILD_HOOKS",
    "PrebuildMode",
    "PrebuiltSource",
    "PrebuiltStart",
    "attach_branch",
    "pending_steps",
    "steps_from_json",
]

# what a prebuild runs; everything later runs in each workspace
PREBUILD_HOOKS = frozenset({LifecycleHook.ON_CREATE, LifecycleHook.UPDATE_CONTENT})


@dataclass(frozen=True, slots=True)
class PrebuildMode:
    """How the prebuild builder makes its workspace: at ``commit`` on ``branch``,
    with ``secret_env`` for the prebuild hooks only, the setup log mirrored to
    ``tee`` (the build's log)."""

    branch: str
    commit: str
    secret_env: Mapping[str, str] = field(default_factory=dict)
    tee: Callable[[str], None] | None = None


@dataclass(frozen=True, slots=True)
class PrebuiltStart:
    """A ready prebuild a workspace can start from."""

    prebuild_id: str
    build_id: str
    commit: str
    branch: str
    snapshot_id: str
    workspace: dict[str, Any]  # the build's saved setup (see PrebuildBuild.workspace)


class PrebuiltSource(Protocol):
    async def find(self, principal: Principal, req: WorkspaceRequest) -> PrebuiltStart | None:
        """The newest ready prebuild for the request's repo + branch + devcontainer."""
        ...


def pending_steps(steps: list[LifecycleStep]) -> list[dict[str, Any]]:
    """The steps a prebuild did not run (and ``updateContentCommand``, run again
    when the branch moved on), with whether each blocks readiness."""
    return [{**step_to_json(s), "blocking": s.blocking} for s in steps]


def steps_from_json(items: list[Mapping[str, Any]]) -> list[LifecycleStep]:
    return [
        dataclasses.replace(step_from_json(item), blocking=bool(item.get("blocking")))
        for item in items
    ]


async def attach_branch(repo_dir: Path, branch: str, commit: str) -> None:
    """Put a clone made at ``commit`` (detached) on ``branch``, tracking
    ``origin/<branch>`` at that commit, as a clone of the branch would be.
    Local only: no remote is contacted."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo_dir),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    for args in (
        ("update-ref", f"refs/remotes/origin/{branch}", commit),
        ("checkout", "-q", "-B", branch, commit),
        ("branch", "-q", f"--set-upstream-to=origin/{branch}", branch),
        ("config", "remote.origin.fetch", f"+refs/heads/{branch}:refs/remotes/origin/{branch}"),
    ):
        proc = await asyncio.create_subprocess_exec(
            "git", "-C", str(repo_dir), *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeFailure(
                f"could not put the clone on branch {branch}: {err.decode(errors='replace')}"
            )
