"""Make a workspace: clone, configure, create the sandbox, copy in, run the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...errors import (
    AtelierError,
    FileExists,
    GitCommandFailed,
    InvalidRequest,
    RuntimeFailure,
    SnapshotNotFound,
)
from ...git import ClonedRepo, GitCredentials, GitUrl, clone, parse_git_url
from ...images.store import read_manifest
from ...workspaces import (
    DevContainerConfig,
    LifecycleHook,
    LifecyclePlan,
    LifecycleStage,
    LifecycleStep,
    StepLocation,
    load_devcontainer,
    plan_lifecycle,
)
from ..auth import Principal
from ..models import CreateRequest, SandboxRecord, SandboxState
from ..secrets import SecretService
from ..service import SandboxService
from . import git_sync
from .copy import copy_tree_into
from .git_sync import SandboxRepo, SyncResult
from .host_commands import run_host_steps
from .lifecycle_runner import LifecycleRunner, StepRecord, step_from_json, step_to_json
from .prebuilt import PREBUILD_HOOKS, PrebuildMode, PrebuiltSource, attach_branch, pending_steps
from .request import WorkspaceRequest
from .setup_log import SetupLog, setup_log_path, workspace_dir
from .templates import resolve_template

__all__ = ["WorkspaceService", "image_env", "repo_folder_name"]

log = logging.getLogger(__name__)
WORKSPACE_LABEL = "atelier.workspace"


def repo_folder_name(url: GitUrl) -> str:
    """``https://host/group/app.git`` → ``app`` (the folder a clone would make)."""
    name = url.path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return name if name and name not in (".", "..") else "workspace"


def image_env(manifest: dict[str, Any] | None) -> dict[str, str]:
    """The ``Env`` of a template's image config as a mapping."""
    env: dict[str, str] = {}
    for item in ((manifest or {}).get("image") or {}).get("env") or []:
        key, sep, value = str(item).partition("=")
        if sep and key:
            env[key] = value
    return env


def _image_user(manifest: dict[str, Any] | None) -> str | None:
    user = ((manifest or {}).get("image") or {}).get("user")
    return str(user).split(":", 1)[0] if user else None


def _start_steps(config: DevContainerConfig | None) -> list[LifecycleStep]:
    if config is None:
        return []
    plan = plan_lifecycle(config, allow_host_commands=True, stage=LifecycleStage.START)
    return [s for s in plan.steps if s.location is StepLocation.CONTAINER]


class WorkspaceService:
    def __init__(self, sandboxes: SandboxService, secrets: SecretService | None = None) -> None:
        self.sandboxes = sandboxes
        self.settings = sandboxes.settings
        self.secrets = secrets
        self._background: set[asyncio.Task[None]] = set()
        self.prebuilt: PrebuiltSource | None = None  # set by the app: core/prebuilds

    async def _credentials(
        self,
        principal: Principal,
        url: GitUrl,
        given: GitCredentials | None,
        secret: str | None,
    ) -> GitCredentials | None:
        """Inline credentials, else the named stored secret, else the caller's
        stored secret for the URL's host (see ``core/secrets.py``)."""
        if given is not None or self.secrets is None:
            return given
        return await self.secrets.credentials_for(principal.token_id, url, name=secret)

    @property
    def _staging_root(self) -> Path:
        root = self.settings.data_dir / "workspaces"
        root.mkdir(parents=True, exist_ok=True)
        return root

    async def create(
        self, principal: Principal, req: WorkspaceRequest, *, prebuild: PrebuildMode | None = None
    ) -> SandboxRecord:
        """Create the workspace; returns once the steps up to ``waitFor`` have run.

        Before the sandbox exists, a failure leaves nothing behind. After, a
        failing step leaves the sandbox stopped in state ``error`` with the
        setup log in its logs, and raises WorkspaceSetupFailed naming it.

        With a ready prebuild for the repository's branch (and ``req.prebuild``)
        it starts from the prebuild's snapshot instead (``from_prebuild.py``).
        ``prebuild`` is the prebuild builder's own call (see ``prebuilt.py``).
        """
        if prebuild is None and req.prebuild and self.prebuilt is not None:
            start = await self.prebuilt.find(principal, req)
            if start is not None:
                from .from_prebuild import create_from_prebuild

                try:
                    return await create_from_prebuild(self, principal, req, start)
                except SnapshotNotFound:  # removed since it was found: make it the long way
                    log.info("prebuild %s vanished; cloning instead", start.build_id)
                except GitCommandFailed as exc:  # no fast-forward (a force push): the long way
                    log.info("prebuild %s cannot be brought forward (%s)", start.build_id, exc)
                    if isinstance(sandbox_id := exc.details.get("sandbox_id"), str):
                        with contextlib.suppress(AtelierError):
                            await self.sandboxes.delete(None, sandbox_id)
        url = parse_git_url(req.repo)
        credentials = await self._credentials(principal, url, req.credentials, req.secret)
        staging = Path(tempfile.mkdtemp(prefix=".setup-", dir=self._staging_root))
        tee = prebuild.tee if prebuild is not None else None
        try:
            setup = SetupLog(staging / "setup.log", tee)
            repo_dir = staging / repo_folder_name(url)
            ref = prebuild.commit if prebuild is not None else req.ref
            setup.line("clone", f"cloning {url.redacted()} ({ref or 'default branch'})")
            cloned = await clone(
                url,
                repo_dir,
                ref=ref,
                depth=req.depth,
                credentials=credentials,
                on_output=lambda line: setup.line("clone", line),
            )
            if prebuild is not None:
                await attach_branch(repo_dir, prebuild.branch, cloned.commit)
                cloned = dataclasses.replace(cloned, ref=prebuild.branch, branch=prebuild.branch)
            setup.line("clone", f"at {cloned.commit}")
            config = await asyncio.to_thread(
                load_devcontainer, repo_dir, config_path=req.devcontainer, local_env=req.local_env
            )
            plan = (
                plan_lifecycle(config, allow_host_commands=self.settings.allow_host_commands)
                if config is not None
                else None
            )
            if config is not None and config.warnings:
                for warning in config.warnings:
                    setup.line("config", f"warning: {warning}")
            if plan is not None:
                await run_host_steps(plan, repo_dir, setup)
            template = await resolve_template(
                self.settings,
                config,
                repo_key=url.redacted(),
                log=lambda line: setup.line("image", line),
            )
            create, workspace = self._plan_sandbox(req, url, cloned, config, template)
            rec = await self.sandboxes.create_unpooled(principal, create)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # the sandbox exists: from here on, failures are kept for inspection
        final_log = setup_log_path(self.settings.data_dir, rec.id)
        final_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(setup.path, final_log)
        setup = SetupLog(final_log, tee)
        try:
            rec = await self.sandboxes.repo.update_sandbox(rec.id, workspace=workspace)
            await self.sandboxes.repo.record_event(
                "workspace.create", rec.id, principal.token_id, repo=workspace["repo"]
            )
            rec = await self._set_up(rec, repo_dir, plan, setup, prebuild)
        except BaseException as exc:
            await self._fail(rec, exc, setup)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return rec

    def _plan_sandbox(
        self,
        req: WorkspaceRequest,
        url: GitUrl,
        cloned: ClonedRepo,
        config: DevContainerConfig | None,
        template: str,
    ) -> tuple[CreateRequest, dict[str, Any]]:
        manifest = read_manifest(self.sandboxes.templates.path(template))
        env = image_env(manifest)
        vcpus, memory_mib, disk_mib = req.vcpus, req.memory_mib, req.disk_mib
        folder = f"/workspaces/{repo_folder_name(url)}"
        user = _image_user(manifest)
        if config is not None:
            env.update(config.container_env)
            env = config.remote_environment(env)
            vcpus, memory_mib, disk_mib = config.host_requirements.apply(
                vcpus=vcpus, memory_mib=memory_mib, disk_mib=disk_mib
            )
            folder = config.workspace_folder
            user = config.remote_user or config.container_user or user
        env.update(req.env)
        create = CreateRequest(
            template=template,
            runtime=req.runtime,
            vcpus=vcpus,
            memory_mib=memory_mib,
            disk_mib=disk_mib,
            env=env,
            labels={**req.labels, WORKSPACE_LABEL: repo_folder_name(url)},
            timeout=req.timeout,
            network=req.network,
        )
        self.sandboxes.validate(create)
        devcontainer = None
        if config is not None:
            devcontainer = config.config_path.relative_to(config.repo_dir).as_posix()
        workspace: dict[str, Any] = {
            "repo": url.redacted(),
            "ref": req.ref,
            "commit": cloned.commit,
            "branch": cloned.branch,
            "devcontainer": devcontainer,
            "folder": folder,
            "user": user or None,
            "status": "setting_up",
            "wait_for": str(config.wait_for) if config is not None else None,
            "lifecycle": [],
            "warnings": list(config.warnings) if config is not None else [],
            "forward_ports": [str(p) for p in config.forward_ports] if config else [],
            # postStartCommand and postAttachCommand run again on every start
            "on_start": [step_to_json(s) for s in _start_steps(config)],
        }
        return create, workspace

    async def _update(self, rec: SandboxRecord, **changes: Any) -> SandboxRecord:
        current = await self.sandboxes.repo.get_sandbox(rec.id)
        workspace = {**(current.workspace or {}), **changes}
        return await self.sandboxes.repo.update_sandbox(rec.id, workspace=workspace)

    async def _set_up(
        self,
        rec: SandboxRecord,
        repo_dir: Path,
        plan: LifecyclePlan | None,
        setup: SetupLog,
        prebuild: PrebuildMode | None = None,
    ) -> SandboxRecord:
        workspace = rec.workspace or {}
        agent = await self.sandboxes.agents.get(rec.id, rec.runtime)
        setup.line("copy", f"copying the working tree into {workspace['folder']}")
        await copy_tree_into(agent, repo_dir, workspace["folder"], owner=workspace.get("user"))
        steps = [s for s in plan.steps if s.location is StepLocation.CONTAINER] if plan else []
        if prebuild is not None:
            return await self._prebuild_steps(rec, steps, setup, prebuild)
        blocking = [s for s in steps if s.blocking]
        later = [s for s in steps if not s.blocking]

        async def record(records: list[StepRecord]) -> None:
            await self._update(rec, lifecycle=[r.to_json() for r in records])

        runner = LifecycleRunner(
            agent, setup, env=rec.env, cwd=workspace["folder"], on_record=record
        )
        await runner.run(blocking)
        if not later:
            return await self._update(rec, status="ready")
        rec = await self._update(rec, status="ready_pending")  # usable; later steps run
        task = asyncio.get_running_loop().create_task(self._run_later(rec, runner, later, setup))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return rec

    async def _prebuild_steps(
        self,
        rec: SandboxRecord,
        steps: list[LifecycleStep],
        setup: SetupLog,
        prebuild: PrebuildMode,
    ) -> SandboxRecord:
        """Run the prebuild's hooks (with its secrets); keep the rest for the
        workspaces that will start from it."""
        now = [s for s in steps if s.hook in PREBUILD_HOOKS]
        env = {**rec.env, **prebuild.secret_env}
        runner = LifecycleRunner(agent=await self.sandboxes.agents.get(rec.id, rec.runtime),
                                 log=setup, env=env, cwd=rec.default_cwd or "/")  # fmt: skip
        await runner.run(now)
        return await self._update(
            rec,
            status="prebuilt",
            lifecycle=[r.to_json() for r in runner.records],
            later=pending_steps([s for s in steps if s.hook not in PREBUILD_HOOKS]),
            update_content=pending_steps(
                [s for s in steps if s.hook is LifecycleHook.UPDATE_CONTENT]
            ),
        )

    async def _run_later(
        self, rec: SandboxRecord, runner: LifecycleRunner, steps: list[Any], setup: SetupLog
    ) -> None:
        try:
            await runner.run(steps)
            await self._update(rec, status="ready")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self._fail(rec, exc, setup)

    async def _fail(self, rec: SandboxRecord, exc: BaseException, setup: SetupLog) -> None:
        """Keep the sandbox, stopped, in state ``error``, with the reason and log."""
        message = exc.message if isinstance(exc, AtelierError) else repr(exc)
        setup.line("setup", f"failed: {message}")
        if isinstance(exc, AtelierError):
            exc.details.setdefault("sandbox_id", rec.id)
        with contextlib.suppress(Exception):
            await self._update(rec, status="failed")
            await self.sandboxes.stop(None, rec.id)
        with contextlib.suppress(Exception):
            await self.sandboxes.repo.update_sandbox(
                rec.id, state=SandboxState.ERROR, error=f"workspace setup failed: {message}"
            )
            await self.sandboxes.repo.record_event("workspace.failed", rec.id, None, error=message)

    async def clone_into(
        self,
        principal: Principal,
        sandbox_id: str,
        *,
        repo: str,
        path: str | None,
        ref: str | None,
        depth: int | None,
        credentials: GitCredentials | None,
        secret: str | None = None,
    ) -> dict[str, Any]:
        """Clone ``repo`` on the host and copy the tree into a running sandbox at
        ``path`` (default ``/workspaces/<name>``), owned by its default user."""
        url = parse_git_url(repo)
        credentials = await self._credentials(principal, url, credentials, secret)
        rec, agent = await self.sandboxes.agent(principal, sandbox_id)
        destination = path or f"/workspaces/{repo_folder_name(url)}"
        if not destination.startswith("/"):
            destination = f"{rec.default_cwd or '/'}/{destination}"
        staging = Path(tempfile.mkdtemp(prefix=".clone-", dir=self._staging_root))
        try:
            cloned = await clone(
                url, staging / "tree", ref=ref, depth=depth, credentials=credentials
            )
            if await agent.exists(destination) and await agent.list_dir(destination):
                raise FileExists(
                    f"{destination} exists in the sandbox and is not empty",
                    details={"path": destination},
                )
            await copy_tree_into(agent, staging / "tree", destination, owner=rec.default_user)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        await self.sandboxes.repo.record_event(
            "git.clone", rec.id, principal.token_id, repo=url.redacted(), path=destination
        )
        return {"path": destination, "commit": cloned.commit, "branch": cloned.branch}

    async def git_sync(
        self,
        principal: Principal,
        sandbox_id: str,
        *,
        direction: str,
        path: str | None,
        remote: str,
        branch: str | None,
        credentials: GitCredentials | None,
        secret: str | None = None,
    ) -> SyncResult:
        """``git push`` or ``git pull`` (``direction``) of the repository at
        ``path`` (default: the workspace folder), done through the host."""
        rec, agent = await self.sandboxes.agent(principal, sandbox_id)
        folder = path or rec.default_cwd
        if not folder:
            raise InvalidRequest("this sandbox is not a workspace: give the repository's path")
        repo = SandboxRepo(agent, folder, rec.default_user)
        url = await git_sync.remote_url(repo, remote)
        credentials = await self._credentials(principal, url, credentials, secret)
        sync = git_sync.push if direction == "push" else git_sync.pull
        result = await sync(repo, remote=remote, branch=branch, credentials=credentials)
        await self.sandboxes.repo.record_event(
            f"git.{direction}",
            rec.id,
            principal.token_id,
            remote=remote,
            branch=result.branch,
            commit=result.commit,
        )
        return result

    async def after_start(self, rec: SandboxRecord) -> None:
        """A workspace started again: run its postStart/postAttach steps in the
        background (their output goes to the setup log; a failure marks the
        workspace failed, as at creation)."""
        steps = [step_from_json(s) for s in (rec.workspace or {}).get("on_start") or []]
        if not steps or (rec.workspace or {}).get("status") == "failed":
            return
        agent = await self.sandboxes.agents.get(rec.id, rec.runtime)
        setup = SetupLog(setup_log_path(self.settings.data_dir, rec.id))
        setup.line("start", "running the start steps again")
        runner = LifecycleRunner(agent, setup, env=rec.env, cwd=rec.default_cwd or "/")
        rec = await self._update(rec, status="ready_pending")
        task = asyncio.get_running_loop().create_task(self._run_later(rec, runner, steps, setup))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def recover(self) -> None:
        """At server start: a workspace whose setup was cut short by a restart
        is marked failed (and, if it never became usable, stopped in state
        ``error``), with a line in its setup log saying so."""
        for rec in await self.sandboxes.repo.list_sandboxes():
            status = (rec.workspace or {}).get("status")
            if status not in ("setting_up", "ready_pending"):
                continue
            setup = SetupLog(setup_log_path(self.settings.data_dir, rec.id))
            message = "the server restarted while the workspace was being set up"
            if status == "setting_up":
                await self._fail(rec, RuntimeFailure(message), setup)
            else:
                setup.line("setup", f"{message}; the remaining lifecycle steps did not run")
                await self._update(rec, status="failed")

    async def close(self) -> None:
        """Cancel lifecycle steps still running in the background (server shutdown)."""
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task

    def remove_files(self, sandbox_id: str) -> None:
        shutil.rmtree(workspace_dir(self.settings.data_dir, sandbox_id), ignore_errors=True)
