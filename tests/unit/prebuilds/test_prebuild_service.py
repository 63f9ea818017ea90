"""Prebuild use cases over a real database and the real operations framework;
the builder (a whole workspace set-up) and the snapshot service are fakes here
(the integration tests run the real ones)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from atelier.config import Settings
from atelier.core.auth import Principal
from atelier.core.prebuilds import (
    BuildState,
    PrebuildBuilder,
    PrebuildService,
    PrebuildSpec,
    PrebuildStore,
)
from atelier.core.secrets import SecretService
from atelier.core.snapshots import SnapshotService
from atelier.core.workspaces.request import WorkspaceRequest
from atelier.errors import (
    InvalidRequest,
    PrebuildNotFound,
    SnapshotInUse,
    SnapshotNotFound,
    WebhookReplayed,
    WebhookSignatureInvalid,
    WorkspaceSetupFailed,
)
from atelier.operations import OperationManager
from atelier.store.db import Database
from atelier.store.repository import Repository
from atelier.store.secrets import SecretRepository

ALICE = Principal(token_id="tok-alice", name="alice", admin=False)
BOB = Principal(token_id="tok-bob", name="bob", admin=False)
REPO = "https://git.example.com/team/app.git"
SECRET = "hook-secret"


class FakeBuilder:
    """Records builds; fails the commits listed in ``failing``."""

    def __init__(self) -> None:
        self.built: list[str] = []
        self.failing: set[str] = set()

    async def build(
        self, config: Any, commit: str, write: Callable[[str], None]
    ) -> tuple[str, dict[str, Any]]:
        self.built.append(commit)
        write(f"building {commit}")
        if commit in self.failing:
            write("onCreateCommand: exit 3")
            raise WorkspaceSetupFailed(
                "onCreateCommand (devcontainer.json) failed with exit code 3"
            )
        return f"snap-{commit[:8]}", {"record": {"folder": "/workspaces/app"}, "later": []}


class FakeSnapshots:
    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.in_use: set[str] = set()

    async def delete(self, principal: Principal, ref: str) -> None:
        if ref in self.in_use:
            raise SnapshotInUse(f"{ref} in use")
        if ref in self.deleted:
            raise SnapshotNotFound(ref)
        self.deleted.append(ref)


@pytest.fixture
async def world(
    tmp_path: Path,
) -> AsyncIterator[tuple[PrebuildService, FakeBuilder, FakeSnapshots]]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}")
    await db.migrate()
    settings = Settings(data_dir=tmp_path)
    operations = OperationManager(settings, Repository(db))
    builder, snapshots = FakeBuilder(), FakeSnapshots()
    service = PrebuildService(
        PrebuildStore(db),
        operations,
        cast(PrebuildBuilder, builder),
        cast(SnapshotService, snapshots),
        SecretService(settings, SecretRepository(db)),
    )
    yield service, builder, snapshots
    await operations.close()
    await db.close()


async def _settle(service: PrebuildService, build_op: str | None) -> None:
    assert build_op is not None
    await service.operations.wait(build_op)


def _github(body: bytes, delivery: str, secret: str = SECRET) -> dict[str, str]:
    return {
        "x-hub-signature-256": "sha256="
        + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "x-github-event": "push",
        "x-github-delivery": delivery,
    }


def _push(branch: str, sha: str) -> bytes:
    return json.dumps({"ref": f"refs/heads/{branch}", "after": sha}).encode()


async def test_a_commit_is_built_once(world: Any) -> None:
    service, builder, _ = world
    config = await service.add(ALICE, PrebuildSpec(repo=REPO, branch="main"))
    build, new = await service.trigger(config, "a" * 40, "manual")
    again, new_again = await service.trigger(config, "a" * 40, "poll")
    assert new and not new_again and again.id == build.id
    await _settle(service, build.operation_id)
    assert builder.built == ["a" * 40]
    done = await service.build(ALICE, config.id, build.id)
    assert done.state is BuildState.READY and done.snapshot_id == "snap-aaaaaaaa"
    assert done.started_at is not None and done.finished_at is not None


async def test_webhook_push_builds_replays_are_refused_other_branches_ignored(world: Any) -> None:
    service, builder, _ = world
    config = await service.add(
        ALICE,
        PrebuildSpec(repo=REPO, branch="main", webhook_provider="github", webhook_secret=SECRET),
    )
    body = _push("main", "b" * 40)
    outcome = await service.webhook("github", config.id, _github(body, "d-1"), body)
    assert outcome.status == "queued" and outcome.build is not None
    with pytest.raises(WebhookReplayed) as replay:
        await service.webhook("github", config.id, _github(body, "d-1"), body)
    assert replay.value.status == 409
    second = await service.webhook("github", config.id, _github(body, "d-2"), body)
    assert second.status == "duplicate" and second.build is not None
    assert second.build.id == outcome.build.id
    other = _push("feature", "c" * 40)
    ignored = await service.webhook("github", config.id, _github(other, "d-3"), other)
    assert ignored.status == "ignored"
    with pytest.raises(WebhookSignatureInvalid):
        await service.webhook("github", config.id, _github(body, "d-4", "wrong"), body)
    with pytest.raises(PrebuildNotFound):
        await service.webhook("gitlab", config.id, _github(body, "d-5"), body)
    await _settle(service, outcome.build.operation_id)
    assert builder.built == ["b" * 40]


async def test_a_failed_build_keeps_the_previous_ready_one_in_use(world: Any) -> None:
    service, builder, _ = world
    config = await service.add(ALICE, PrebuildSpec(repo=REPO, branch="main"))
    good, _ = await service.trigger(config, "1" * 40, "manual")
    await _settle(service, good.operation_id)
    builder.failing.add("2" * 40)
    bad, _ = await service.trigger(config, "2" * 40, "manual")
    await _settle(service, bad.operation_id)
    failed = await service.build(ALICE, config.id, bad.id)
    assert failed.state is BuildState.FAILED and "exit code 3" in (failed.error or "")
    log = b"".join(
        [c async for c in service.operations.stream_logs(bad.operation_id, follow=False)]
    )
    assert b"onCreateCommand: exit 3" in log
    start = await service.find(ALICE, WorkspaceRequest(repo=REPO, ref="main"))
    assert start is not None and start.commit == "1" * 40 and start.snapshot_id == "snap-11111111"
    # the same commit again: nothing; a manual retry of the failed commit: built again
    builder.failing.clear()
    same, new = await service.trigger(config, "2" * 40, "poll")
    assert not new and same.state is BuildState.FAILED
    retried, new = await service.trigger(config, "2" * 40, "manual", retry_failed=True)
    assert new and retried.id == bad.id
    await _settle(service, retried.operation_id)
    start = await service.find(ALICE, WorkspaceRequest(repo=REPO, ref="main"))
    assert start is not None and start.commit == "2" * 40


async def test_find_matches_owner_repo_branch_and_devcontainer(world: Any) -> None:
    service, _, _ = world
    config = await service.add(
        ALICE, PrebuildSpec(repo=REPO, branch="main", devcontainer=".devcontainer/py")
    )
    build, _ = await service.trigger(config, "e" * 40, "manual")
    await _settle(service, build.operation_id)
    hit = WorkspaceRequest(repo=REPO, ref="main", devcontainer="./.devcontainer/py/")
    assert await service.find(ALICE, hit) is not None
    assert await service.find(BOB, hit) is None  # another token's prebuilds are not used
    admin = Principal(token_id="tok-admin", name="admin", admin=True)
    assert await service.find(admin, hit) is not None
    for miss in (
        WorkspaceRequest(repo=REPO, ref="dev", devcontainer=".devcontainer/py"),
        WorkspaceRequest(repo=REPO, ref="main"),
        WorkspaceRequest(repo="https://git.example.com/team/other.git", ref="main"),
    ):
        assert await service.find(ALICE, miss) is None


async def test_retention_expires_old_builds_and_defers_snapshots_in_use(world: Any) -> None:
    service, _, snapshots = world
    config = await service.add(ALICE, PrebuildSpec(repo=REPO, branch="main", keep=1))
    snapshots.in_use.add("snap-11111111")  # a workspace still runs from the first
    for sha in ("1" * 40, "2" * 40, "3" * 40):
        build, _ = await service.trigger(config, sha, "manual")
        await _settle(service, build.operation_id)
    builds = {b.commit[0]: b for b in await service.builds(ALICE, config.id)}
    assert builds["3"].state is BuildState.READY
    assert builds["2"].state is BuildState.EXPIRED and builds["2"].snapshot_id is None
    assert builds["1"].state is BuildState.EXPIRED and builds["1"].snapshot_id == "snap-11111111"
    assert snapshots.deleted == ["snap-22222222"]
    snapshots.in_use.clear()  # the workspace is gone: the next collection removes it
    await service.collect_all()
    builds = {b.commit[0]: b for b in await service.builds(ALICE, config.id)}
    assert builds["1"].snapshot_id is None and "snap-11111111" in snapshots.deleted


async def test_bad_configurations_are_refused_and_nothing_is_stored(world: Any) -> None:
    service, _, _ = world
    for spec in (
        PrebuildSpec(repo="file:///etc", branch="main"),
        PrebuildSpec(repo=REPO, branch="-x"),
        PrebuildSpec(repo=REPO, branch="main", keep=0),
        PrebuildSpec(repo=REPO, branch="main", webhook_provider="svn", webhook_secret="s"),
        PrebuildSpec(repo=REPO, branch="main", webhook_provider="github"),
        PrebuildSpec(repo=REPO, branch="main", env_secrets={"1BAD": "x"}),
        PrebuildSpec(repo=REPO, branch="main", poll_interval=0),
    ):
        with pytest.raises(InvalidRequest):
            await service.add(ALICE, spec)
    assert await service.list(ALICE) == []


async def test_the_webhook_secret_is_stored_encrypted_and_not_shown(world: Any) -> None:
    service, _, _ = world
    config = await service.add(
        ALICE,
        PrebuildSpec(repo=REPO, branch="main", webhook_provider="gitlab", webhook_secret=SECRET),
    )
    assert config.webhook_secret_enc and SECRET not in config.webhook_secret_enc
    shown = json.dumps(config.to_json())
    assert SECRET not in shown and '"has_webhook_secret": true' in shown


async def test_delete_removes_builds_and_snapshots(world: Any) -> None:
    service, _, snapshots = world
    config = await service.add(ALICE, PrebuildSpec(repo=REPO, branch="main"))
    build, _ = await service.trigger(config, "9" * 40, "manual")
    await _settle(service, build.operation_id)
    with pytest.raises(PrebuildNotFound):
        await service.delete(BOB, config.id)
    assert await service.delete(ALICE, config.id) == []
    assert snapshots.deleted == ["snap-99999999"]
    with pytest.raises(PrebuildNotFound):
        await service.get(ALICE, config.id)
