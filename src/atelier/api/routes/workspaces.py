"""Workspaces: a sandbox made from a git repository and its devcontainer.json."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ...core.idle import validate_auto_stop
from ...core.workspaces.request import WorkspaceRequest
from ...git import GitCredentials
from ..deps import Auth, Ctx
from ..schemas import (
    GitCloneBody,
    GitCloneOut,
    GitCredentialsIn,
    GitSyncBody,
    GitSyncOut,
    SandboxOut,
    WorkspaceCreate,
)

__all__ = ["router"]

router = APIRouter(tags=["workspaces"])


def _credentials(body: GitCredentialsIn | None) -> GitCredentials | None:
    return GitCredentials(**body.model_dump()) if body is not None else None


@router.post("/v1/workspaces", status_code=201, response_model=SandboxOut)
async def create_workspace(body: WorkspaceCreate, ctx: Ctx, principal: Auth) -> SandboxOut:
    """Clone ``repo``, build or pull its image, create the sandbox, copy the working
    tree in and run the lifecycle commands up to ``waitFor``. Errors before the
    sandbox exists leave nothing behind; a failing lifecycle command answers
    422 ``workspace_setup_failed`` with ``details.sandbox_id``: that sandbox is
    kept, stopped, in state ``error``, its setup output in its logs."""
    auto_stop = validate_auto_stop(body.auto_stop.policy()) if body.auto_stop else None
    req = WorkspaceRequest(
        repo=body.repo,
        ref=body.ref,
        devcontainer=body.devcontainer,
        depth=body.depth,
        credentials=_credentials(body.credentials),
        secret=body.secret,
        local_env=body.local_env,
        runtime=body.runtime,
        vcpus=body.vcpus,
        memory_mib=body.memory_mib,
        disk_mib=body.disk_mib,
        env=body.env,
        labels=body.labels,
        timeout=body.timeout,
        network=body.network.policy() if body.network else None,
        prebuild=body.prebuild,
    )
    # shielded: a client that hangs up must not leave a half-made workspace
    rec = await asyncio.shield(ctx.workspaces.create(principal, req))
    if auto_stop is not None:  # docs/lifecycle.md
        rec = await ctx.sandboxes.set_auto_stop(principal, rec.id, auto_stop)
    return SandboxOut.of(rec)


@router.post("/v1/sandboxes/{sandbox_id}/git/clone", response_model=GitCloneOut)
async def git_clone(sandbox_id: str, body: GitCloneBody, ctx: Ctx, principal: Auth) -> GitCloneOut:
    """Clone on the host (the credentials never enter the sandbox) and copy the
    working tree into the running sandbox; 409 ``file_exists`` if ``path`` is
    a non-empty directory."""
    result = await ctx.workspaces.clone_into(
        principal,
        sandbox_id,
        repo=body.repo,
        path=body.path,
        ref=body.ref,
        depth=body.depth,
        credentials=_credentials(body.credentials),
        secret=body.secret,
    )
    return GitCloneOut(**result)


async def _sync(
    direction: str, sandbox_id: str, body: GitSyncBody, ctx: Ctx, principal: Auth
) -> GitSyncOut:
    result = await ctx.workspaces.git_sync(
        principal,
        sandbox_id,
        direction=direction,
        path=body.path,
        remote=body.remote,
        branch=body.branch,
        credentials=_credentials(body.credentials),
        secret=body.secret,
    )
    return GitSyncOut(
        remote=result.remote, branch=result.branch, commit=result.commit, updated=result.updated
    )


@router.post("/v1/sandboxes/{sandbox_id}/git/push", response_model=GitSyncOut)
async def git_push(sandbox_id: str, body: GitSyncBody, ctx: Ctx, principal: Auth) -> GitSyncOut:
    """Push a branch of the sandbox's repository: the sandbox bundles its new
    commits, the server pushes them with the credentials of this call (the
    sandbox needs no network and never sees them). 409 ``conflict`` when the
    remote moved on (pull first)."""
    return await _sync("push", sandbox_id, body, ctx, principal)


@router.post("/v1/sandboxes/{sandbox_id}/git/pull", response_model=GitSyncOut)
async def git_pull(sandbox_id: str, body: GitSyncBody, ctx: Ctx, principal: Auth) -> GitSyncOut:
    """Fetch the remote branch on the server and fast-forward the sandbox's branch."""
    return await _sync("pull", sandbox_id, body, ctx, principal)
