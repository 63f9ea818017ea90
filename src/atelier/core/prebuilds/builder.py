"""Build one prebuild: a workspace of the commit in prebuild mode (clone at
the commit, image, ``onCreateCommand`` + ``updateContentCommand`` with the
prebuild's repository-scoped secrets), a snapshot of it -- with memory where
the runtime can, so what those commands started is running on resume -- and
then the build sandbox is deleted, whatever happened."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ...errors import AtelierError, SecretNotFound
from ...git import parse_git_url
from ..auth import Principal
from ..models import SandboxRecord
from ..secrets import SecretService
from ..snapshots import SnapshotService
from ..workspaces.prebuilt import PrebuildMode
from ..workspaces.request import WorkspaceRequest
from ..workspaces.service import WORKSPACE_LABEL, WorkspaceService
from .models import PrebuildConfig

__all__ = ["PREBUILD_LABEL", "PrebuildBuilder", "owner_principal"]

log = logging.getLogger("atelier.prebuilds")
PREBUILD_LABEL = "atelier.prebuild"  # on build sandboxes and snapshots: the prebuild id
COMMIT_LABEL = "atelier.prebuild.commit"
_NOT_SAVED = ("lifecycle", "later", "update_content", "status")


def owner_principal(config: PrebuildConfig) -> Principal:
    """A prebuild acts as the token that configured it."""
    return Principal(token_id=config.owner, name=f"prebuild {config.id}", admin=False)


class PrebuildBuilder:
    def __init__(
        self,
        workspaces: WorkspaceService,
        snapshots: SnapshotService,
        secrets: SecretService | None,
    ) -> None:
        self.workspaces = workspaces
        self.snapshots = snapshots
        self.secrets = secrets

    async def secret_env(self, config: PrebuildConfig) -> dict[str, str]:
        """The prebuild's repository-scoped secrets as environment variables."""
        if not config.env_secrets:
            return {}
        if self.secrets is None:
            raise SecretNotFound("this server keeps no secrets")
        url = parse_git_url(config.repo)
        env: dict[str, str] = {}
        for variable, name in config.env_secrets.items():
            creds = await self.secrets.credentials_for(config.owner, url, name=name)
            value = (creds.token or creds.ssh_private_key or "") if creds else ""
            env[variable] = value
        return env

    async def build(
        self, config: PrebuildConfig, commit: str, write: Callable[[str], None]
    ) -> tuple[str, dict[str, Any]]:
        """Build ``commit``; the snapshot id and what a workspace needs from it."""
        principal = owner_principal(config)
        req = WorkspaceRequest(
            repo=config.repo,
            ref=config.branch,
            devcontainer=config.devcontainer,
            secret=config.git_secret,
            runtime=config.runtime,
            vcpus=config.vcpus,
            memory_mib=config.memory_mib,
            disk_mib=config.disk_mib,
            labels={PREBUILD_LABEL: config.id},
            timeout=None,
            prebuild=False,
        )
        mode = PrebuildMode(
            branch=config.branch,
            commit=commit,
            secret_env=await self.secret_env(config),
            tee=write,
        )
        rec: SandboxRecord | None = None
        try:
            rec = await self.workspaces.create(principal, req, prebuild=mode)
            write(f"[snapshot] saving {rec.id} (memory where the {rec.runtime} runtime can)")
            snap = await self.snapshots.create(
                principal,
                rec.id,
                name=None,
                labels={PREBUILD_LABEL: config.id, COMMIT_LABEL: commit},
                memory=None,
            )
            write(
                f"[snapshot] {snap.id}: {snap.size_bytes} bytes"
                + (", with memory" if snap.has_memory else ", files only")
            )
            return snap.id, _saved(rec)
        except AtelierError as exc:
            sandbox_id = exc.details.get("sandbox_id")
            if rec is None and isinstance(sandbox_id, str):
                await self._discard(sandbox_id, write)
            raise
        finally:
            if rec is not None:
                await self._discard(rec.id, write)

    async def _discard(self, sandbox_id: str, write: Callable[[str], None]) -> None:
        write(f"[cleanup] deleting build sandbox {sandbox_id}")
        with contextlib.suppress(AtelierError):
            await self.workspaces.sandboxes.delete(None, sandbox_id)


def _saved(rec: SandboxRecord) -> dict[str, Any]:
    workspace = dict(rec.workspace or {})
    return {
        "template": rec.template,
        "runtime": rec.runtime,
        "vcpus": rec.vcpus,
        "memory_mib": rec.memory_mib,
        "disk_mib": rec.disk_mib,
        "env": dict(rec.env),
        "label": rec.labels.get(WORKSPACE_LABEL),
        "record": {k: v for k, v in workspace.items() if k not in _NOT_SAVED},
        "later": workspace.get("later") or [],
        "update_content": workspace.get("update_content") or [],
        "steps_run": workspace.get("lifecycle") or [],
    }
