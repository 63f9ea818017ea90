"""Start a workspace from a ready prebuild instead of cloning and running
``onCreateCommand``.

1. ask the remote where the branch is now, with the *caller's* credentials
   (this also proves the caller can read the repository);
2. create the sandbox from the prebuild's snapshot (its files, and its memory
   where the runtime saved it: services the prebuild started are running);
3. if the branch moved on since the prebuild: fetch on the host, push the new
   commits in as a bundle and fast-forward (``git_sync.pull``, ADR 0016), then
   run ``updateContentCommand`` again;
4. run ``postCreateCommand`` and the later steps as a new workspace does
   (up to ``waitFor`` before returning, the rest in the background), with the
   caller's environment.

The workspace record says which prebuild it came from (``prebuild``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ...git import parse_git_url
from ..auth import Principal
from ..models import CreateRequest, SandboxRecord
from ..prebuilds.remote import branch_head
from . import git_sync
from .git_sync import SandboxRepo
from .lifecycle_runner import LifecycleRunner, StepRecord
from .prebuilt import PrebuiltStart, steps_from_json
from .request import WorkspaceRequest
from .setup_log import SetupLog, setup_log_path

if TYPE_CHECKING:
    from .service import WorkspaceService

__all__ = ["create_from_prebuild"]

WORKSPACE_LABEL = "atelier.workspace"


async def create_from_prebuild(
    service: WorkspaceService, principal: Principal, req: WorkspaceRequest, start: PrebuiltStart
) -> SandboxRecord:
    url = parse_git_url(req.repo)
    credentials = await service._credentials(principal, url, req.credentials, req.secret)
    head = await branch_head(url, start.branch, credentials)
    saved = start.workspace
    record: dict[str, Any] = dict(saved["record"])
    create = CreateRequest(
        template=saved["template"],
        runtime=saved["runtime"],
        vcpus=saved["vcpus"],
        memory_mib=saved["memory_mib"],
        disk_mib=saved["disk_mib"],
        env={**saved["env"], **req.env},
        labels={**req.labels, WORKSPACE_LABEL: saved.get("label") or "workspace"},
        timeout=req.timeout,
        network=req.network,
        snapshot=start.snapshot_id,
    )
    rec = await service.sandboxes.create_unpooled(principal, create)
    setup = SetupLog(setup_log_path(service.settings.data_dir, rec.id))
    setup.line("prebuild", f"started from prebuild {start.build_id} at {start.commit}")
    record.update(
        status="setting_up",
        lifecycle=[],
        commit=start.commit,
        prebuild={
            "id": start.prebuild_id,
            "build": start.build_id,
            "commit": start.commit,
            "snapshot": start.snapshot_id,
        },
    )
    try:
        rec = await service.sandboxes.repo.update_sandbox(rec.id, workspace=record)
        await service.sandboxes.repo.record_event(
            "workspace.create", rec.id, principal.token_id, repo=record["repo"],
            prebuild=start.build_id,
        )  # fmt: skip
        agent = await service.sandboxes.agents.get(rec.id, rec.runtime)

        async def keep(records: list[StepRecord]) -> None:
            await service._update(rec, lifecycle=[r.to_json() for r in records])

        runner = LifecycleRunner(agent, setup, env=rec.env, cwd=record["folder"], on_record=keep)
        if head != start.commit:
            setup.line("prebuild", f"{start.branch} moved on to {head}: fast-forwarding")
            repo = SandboxRepo(agent, record["folder"], record.get("user"))
            result = await git_sync.pull(
                repo, remote="origin", branch=start.branch, credentials=credentials
            )
            rec = await service._update(rec, commit=result.commit)
            await runner.run(steps_from_json(saved.get("update_content") or []))
        steps = steps_from_json(saved.get("later") or [])
        await runner.run([s for s in steps if s.blocking])
        later = [s for s in steps if not s.blocking]
        if not later:
            return await service._update(rec, status="ready")
        rec = await service._update(rec, status="ready_pending")
        task = asyncio.get_running_loop().create_task(service._run_later(rec, runner, later, setup))
        service._background.add(task)
        task.add_done_callback(service._background.discard)
        return rec
    except BaseException as exc:
        await service._fail(rec, exc, setup)
        raise
