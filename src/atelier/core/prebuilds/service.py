"""Prebuild use cases: configurations, triggers (manual, webhook, poll), one
build per commit, retention, and finding the prebuild a workspace starts from.

A build runs as an operation (``atelier.operations``): its log is the
operation's NDJSON log, its failure the operation's error. Builds run one at a
time on the server (``queued`` until their turn): a prebuild is a whole
workspace set-up, and a host has few cores.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import re
import secrets as token_gen
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cryptography.fernet import InvalidToken

from ...errors import (
    AtelierError,
    InvalidRequest,
    PrebuildNotFound,
    RuntimeFailure,
    SnapshotInUse,
    SnapshotNotFound,
)
from ...git import parse_git_url
from ...git.sync import check_branch
from ...operations import OperationLog, OperationManager
from ...store.repository import utcnow
from ..auth import Principal
from ..models import SandboxState
from ..secrets import SecretService
from ..snapshots import SnapshotService
from ..workspaces.prebuilt import PrebuiltStart
from ..workspaces.request import WorkspaceRequest
from .builder import PREBUILD_LABEL, PrebuildBuilder, owner_principal
from .models import PROVIDERS, BuildState, PrebuildBuild, PrebuildConfig
from .remote import branch_head
from .store import PrebuildStore
from .webhooks import verify_delivery

__all__ = ["PrebuildService", "PrebuildSpec", "WebhookOutcome"]

log = logging.getLogger("atelier.prebuilds")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_KEEP = 50
MIN_POLL_SECONDS = 1
DELIVERY_MEMORY = timedelta(days=30)  # delivery ids kept this long (replays refused)


@dataclass(frozen=True, slots=True)
class PrebuildSpec:
    """What ``POST /v1/prebuilds`` asks for."""

    repo: str
    branch: str
    devcontainer: str | None = None
    git_secret: str | None = None
    env_secrets: dict[str, str] = field(default_factory=dict)
    keep: int = 3
    webhook_provider: str | None = None
    webhook_secret: str | None = None
    poll_interval: int | None = None
    runtime: str | None = None
    vcpus: int = 1
    memory_mib: int = 1024
    disk_mib: int = 4096


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    status: str  # queued | duplicate | ignored
    reason: str
    build: PrebuildBuild | None = None


def _same_config_path(a: str | None, b: str | None) -> bool:
    def norm(p: str | None) -> str:
        return (p or "").strip().removeprefix("./").rstrip("/")

    return norm(a) == norm(b)


class PrebuildService:
    def __init__(
        self,
        store: PrebuildStore,
        operations: OperationManager,
        builder: PrebuildBuilder,
        snapshots: SnapshotService,
        secrets: SecretService,
    ) -> None:
        self.store = store
        self.operations = operations
        self.builder = builder
        self.snapshots = snapshots
        self.secrets = secrets
        self._build_slot = asyncio.Semaphore(1)

    # -- configurations ------------------------------------------------------
    async def add(self, principal: Principal, spec: PrebuildSpec) -> PrebuildConfig:
        url = parse_git_url(spec.repo)
        check_branch(spec.branch)
        if not 1 <= spec.keep <= MAX_KEEP:
            raise InvalidRequest(f"keep must be between 1 and {MAX_KEEP}, got {spec.keep}")
        provider = spec.webhook_provider
        if provider is not None and provider not in PROVIDERS:
            raise InvalidRequest(
                f"unknown webhook provider {provider!r}: one of {', '.join(PROVIDERS)}"
            )
        if provider is not None and not spec.webhook_secret:
            raise InvalidRequest(f"a {provider} webhook needs its secret (webhook_secret)")
        if spec.webhook_secret and provider is None:
            raise InvalidRequest("webhook_secret without webhook_provider")
        if spec.poll_interval is not None and spec.poll_interval < MIN_POLL_SECONDS:
            raise InvalidRequest(f"poll_interval must be at least {MIN_POLL_SECONDS} s")
        for variable in spec.env_secrets:
            if not _ENV_NAME.match(variable):
                raise InvalidRequest(f"{variable!r} is not an environment variable name")
        names = {*spec.env_secrets.values(), *([spec.git_secret] if spec.git_secret else [])}
        for name in names:  # each must exist now (they are the owner's)
            await self.secrets.credentials_for(principal.token_id, url, name=name)
        config = PrebuildConfig(
            id="pb-" + token_gen.token_hex(5),
            owner=principal.token_id,
            repo=url.plain(),
            branch=spec.branch,
            devcontainer=spec.devcontainer or None,
            git_secret=spec.git_secret,
            env_secrets=dict(spec.env_secrets),
            keep=spec.keep,
            webhook_provider=provider,
            webhook_secret_enc=(
                self.secrets.fernet.encrypt(spec.webhook_secret.encode()).decode()
                if spec.webhook_secret
                else None
            ),
            poll_interval=spec.poll_interval,
            runtime=spec.runtime,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            disk_mib=spec.disk_mib,
            created_at=utcnow(),
        )
        await self.store.add_config(config)
        return config

    async def get(self, principal: Principal, prebuild_id: str) -> PrebuildConfig:
        config = await self.store.get_config(prebuild_id)
        if config is None or (not principal.admin and config.owner != principal.token_id):
            raise PrebuildNotFound(f"prebuild {prebuild_id} does not exist")
        return config

    async def list(self, principal: Principal) -> builtins.list[PrebuildConfig]:
        return await self.store.list_configs(owner=None if principal.admin else principal.token_id)

    async def delete(self, principal: Principal, prebuild_id: str) -> builtins.list[str]:
        """Remove the configuration and its builds' snapshots; the ids of
        snapshots kept because workspaces still use them."""
        config = await self.get(principal, prebuild_id)
        kept: list[str] = []
        for build in await self.store.list_builds(config.id):
            if build.state in (BuildState.QUEUED, BuildState.RUNNING) and build.operation_id:
                raise InvalidRequest(
                    f"prebuild {config.id} is building {build.commit[:12]}: wait for it to end",
                    details={"build": build.id},
                )
            if build.snapshot_id and not await self._drop_snapshot(config, build.snapshot_id):
                kept.append(build.snapshot_id)
        await self.store.delete_config(config.id)
        return kept

    async def builds(self, principal: Principal, prebuild_id: str) -> builtins.list[PrebuildBuild]:
        config = await self.get(principal, prebuild_id)
        return await self.store.list_builds(config.id)

    async def build(self, principal: Principal, prebuild_id: str, build_id: str) -> PrebuildBuild:
        config = await self.get(principal, prebuild_id)
        build = await self.store.get_build(build_id)
        if build is None or build.prebuild_id != config.id:
            raise PrebuildNotFound(f"prebuild {prebuild_id} has no build {build_id}")
        return build

    # -- triggers ------------------------------------------------------------
    async def run(self, principal: Principal, prebuild_id: str) -> tuple[PrebuildBuild, bool]:
        """Build the branch's head now (a failed build of it is tried again)."""
        config = await self.get(principal, prebuild_id)
        head = await self._head(config)
        return await self.trigger(config, head, "manual", retry_failed=True)

    async def _head(self, config: PrebuildConfig) -> str:
        url = parse_git_url(config.repo)
        credentials = await self.secrets.credentials_for(config.owner, url, name=config.git_secret)
        return await branch_head(url, config.branch, credentials)

    async def trigger(
        self, config: PrebuildConfig, commit: str, trigger: str, *, retry_failed: bool = False
    ) -> tuple[PrebuildBuild, bool]:
        """Queue a build of ``commit`` unless it has one: (the build, whether it is new)."""
        existing = await self.store.build_for_commit(config.id, commit)
        if existing is not None:
            if not (retry_failed and existing.state is BuildState.FAILED):
                return existing, False
            op_id = self.operations.new_id()
            build = await self.store.update_build(
                existing.id, state=BuildState.QUEUED, trigger=trigger, operation_id=op_id,
                error=None, started_at=None, finished_at=None, created_at=utcnow(),
            )  # fmt: skip
        else:
            op_id = self.operations.new_id()
            build = PrebuildBuild(
                id="pbb-" + token_gen.token_hex(5),
                prebuild_id=config.id,
                commit=commit,
                state=BuildState.QUEUED,
                trigger=trigger,
                operation_id=op_id,
                snapshot_id=None,
                error=None,
                created_at=utcnow(),
            )
            if not await self.store.add_build(build):  # a concurrent trigger won
                other = await self.store.build_for_commit(config.id, commit)
                assert other is not None
                return other, False
        log.info("prebuild %s: building %s (%s)", config.id, commit, trigger)

        async def job(oplog: OperationLog) -> dict[str, Any]:
            return await self._run_build(config, build, oplog)

        await self.operations.start("prebuild", config.id, config.owner, job, op_id=op_id)
        return build, True

    async def _run_build(
        self, config: PrebuildConfig, build: PrebuildBuild, oplog: OperationLog
    ) -> dict[str, Any]:
        oplog.write(f"[prebuild] {config.repo} {config.branch} at {build.commit} ({build.trigger})")
        async with self._build_slot:
            await self.store.update_build(build.id, state=BuildState.RUNNING, started_at=utcnow())
            try:
                snapshot_id, saved = await self.builder.build(config, build.commit, oplog.write)
            except BaseException as exc:
                message = exc.message if isinstance(exc, AtelierError) else repr(exc)
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self.store.update_build(
                            build.id, state=BuildState.FAILED, error=message,
                            finished_at=utcnow(),
                        )
                    )  # fmt: skip
                raise
            await self.store.update_build(
                build.id, state=BuildState.READY, snapshot_id=snapshot_id, workspace=saved,
                finished_at=utcnow(),
            )  # fmt: skip
        oplog.write(f"[prebuild] ready: snapshot {snapshot_id}")
        await self.collect(config)
        return {"build": build.id, "commit": build.commit, "snapshot_id": snapshot_id}

    async def webhook(
        self, provider: str, prebuild_id: str, headers: Mapping[str, str], body: bytes
    ) -> WebhookOutcome:
        """A push delivery: verified, refused if replayed, built if it moved the branch."""
        config = await self.store.get_config(prebuild_id)
        if config is None or config.webhook_provider is None:
            raise PrebuildNotFound(f"no webhook for prebuild {prebuild_id}")
        if provider != config.webhook_provider and {provider, config.webhook_provider} != {
            "gitea",
            "forgejo",
        }:
            raise PrebuildNotFound(f"prebuild {prebuild_id} has no {provider} webhook")
        event = verify_delivery(provider, headers, body, self._webhook_secret(config))
        await self.store.record_delivery(config.id, event.delivery_id, utcnow())
        commit = event.branches.get(config.branch)
        if commit is None:
            why = f"not a push to {config.branch}" if event.is_push else f"event {event.event!r}"
            return WebhookOutcome("ignored", why)
        build, new = await self.trigger(config, commit, f"webhook:{provider}")
        if not new:
            return WebhookOutcome("duplicate", f"{commit[:12]} has a build already", build)
        return WebhookOutcome("queued", f"building {commit[:12]}", build)

    def _webhook_secret(self, config: PrebuildConfig) -> str:
        if config.webhook_secret_enc is None:
            return ""
        try:
            return self.secrets.fernet.decrypt(config.webhook_secret_enc.encode()).decode()
        except InvalidToken:
            raise RuntimeFailure(
                f"the webhook secret of {config.id} cannot be decrypted (secret-key replaced?)"
            ) from None

    async def poll_once(self) -> builtins.list[PrebuildBuild]:
        """Check every polled prebuild whose interval has passed; the builds started."""
        started = []
        now = utcnow()
        for config in await self.store.list_configs():
            if config.poll_interval is None:
                continue
            due = config.last_polled_at is None or (
                now - config.last_polled_at >= timedelta(seconds=config.poll_interval)
            )
            if not due:
                continue
            await self.store.set_polled(config.id, now)
            try:
                head = await self._head(config)
            except AtelierError as exc:
                log.warning("polling prebuild %s: %s", config.id, exc.message)
                continue
            build, new = await self.trigger(config, head, "poll")
            if new:
                started.append(build)
        return started

    # -- retention -----------------------------------------------------------
    async def collect(self, config: PrebuildConfig) -> None:
        """Keep the newest ``keep`` ready builds; the others expire and their
        snapshots go (later, if a workspace still uses one)."""
        ready = await self.store.list_builds(config.id, [BuildState.READY])
        for build in ready[config.keep :]:
            snapshot = build.snapshot_id
            if snapshot and await self._drop_snapshot(config, snapshot):
                snapshot = None
            await self.store.update_build(build.id, state=BuildState.EXPIRED, snapshot_id=snapshot)
        for build in await self.store.list_builds(config.id, [BuildState.EXPIRED]):
            if build.snapshot_id and await self._drop_snapshot(config, build.snapshot_id):
                await self.store.update_build(build.id, snapshot_id=None)

    async def collect_all(self) -> None:
        for config in await self.store.list_configs():
            with contextlib.suppress(AtelierError):
                await self.collect(config)
        await self.store.forget_deliveries(utcnow() - DELIVERY_MEMORY)

    async def _drop_snapshot(self, config: PrebuildConfig, snapshot_id: str) -> bool:
        """Delete a build's snapshot; False if a workspace still uses it."""
        try:
            await self.snapshots.delete(owner_principal(config), snapshot_id)
        except SnapshotNotFound:
            return True
        except SnapshotInUse:
            return False
        return True

    # -- workspaces ----------------------------------------------------------
    async def find(self, principal: Principal, req: WorkspaceRequest) -> PrebuiltStart | None:
        """The newest ready prebuild of the caller's (an admin's: anyone's)
        configurations for the request's repository, branch and devcontainer."""
        if not req.ref:
            return None
        try:
            repo = parse_git_url(req.repo).plain()
        except InvalidRequest:
            return None
        owner = None if principal.admin else principal.token_id
        best: tuple[PrebuildConfig, PrebuildBuild] | None = None
        for config in await self.store.list_configs(owner=owner, repo=repo):
            if config.branch != req.ref or not _same_config_path(
                config.devcontainer, req.devcontainer
            ):
                continue
            for build in await self.store.list_builds(config.id, [BuildState.READY]):
                if build.snapshot_id and build.workspace:
                    if best is None or build.created_at > best[1].created_at:
                        best = (config, build)
                    break
        if best is None:
            return None
        config, build = best
        assert build.snapshot_id is not None
        return PrebuiltStart(
            prebuild_id=config.id,
            build_id=build.id,
            commit=build.commit,
            branch=config.branch,
            snapshot_id=build.snapshot_id,
            workspace=build.workspace,
        )

    async def recover(self) -> None:
        """At start-up: builds a restart cut short are failed (their operation
        too, by the operations framework) and their build sandboxes deleted."""
        for build in await self.store.unfinished_builds():
            await self.store.update_build(
                build.id, state=BuildState.FAILED, finished_at=utcnow(),
                error="the server stopped while this prebuild ran",
            )  # fmt: skip
        sandboxes = self.builder.workspaces.sandboxes
        for rec in await sandboxes.repo.list_sandboxes():
            if PREBUILD_LABEL in rec.labels and rec.state is not SandboxState.DELETED:
                log.info("deleting build sandbox %s left by a restart", rec.id)
                with contextlib.suppress(AtelierError):
                    await sandboxes.delete(None, rec.id)
