"""Prebuilds end to end: a loopback git server (``git http-backend``), a real
server, real gVisor sandboxes and snapshots.

The repository's ``onCreateCommand`` and ``updateContentCommand`` append to
marker files in the sandbox, so a workspace shows which steps ran in it and
which came with the prebuild's snapshot (counted lines, never timing).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import ServerProcess, new_server, shut_down

from atelier import Sandbox
from atelier.config import Settings
from atelier.images.store import TemplateInfo, TemplateStore
from git_servers import GitHttpServer, run_git

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOOK_SECRET = "prebuild-hook-secret"
DEVCONTAINER = {
    "build": {"dockerfile": "Dockerfile"},  # FROM base: a workspace template of its own
    "waitFor": "postCreateCommand",  # the call returns once it ran
    "onCreateCommand": "echo ran >> /var/tmp/on-create.log && "
    'echo "token=$PREBUILD_TOKEN" >> /var/tmp/on-create.log && '
    "(nohup sleep 4242 >/dev/null 2>&1 &)",  # a "service" the snapshot's memory keeps
    "updateContentCommand": "echo ran >> /var/tmp/update-content.log",
    "postCreateCommand": 'echo "ran token=$PREBUILD_TOKEN" >> /var/tmp/post-create.log',
}
FAILING = {**DEVCONTAINER, "onCreateCommand": "echo about to fail; exit 3"}


@dataclass
class Repo:
    """A repository on the git server and a working copy to push commits from."""

    url: str
    bare: Path
    work: Path

    def commit(self, files: dict[str, str], message: str) -> str:
        for path, text in files.items():
            target = self.work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        run_git("add", "-A", cwd=self.work)
        run_git("commit", "-q", "-m", message, cwd=self.work)
        run_git("push", "-q", str(self.bare), "main", cwd=self.work)
        return run_git("rev-parse", "HEAD", cwd=self.work)


@dataclass
class World:
    git: GitHttpServer
    server: ServerProcess
    http: httpx.Client
    tmp: Path

    def repo(self, name: str, devcontainer: dict[str, Any]) -> tuple[Repo, str]:
        work = self.tmp / f"{name}-work"
        run_git("init", "-q", "--initial-branch=main", str(work))
        bare = self.git.root / f"{name}.git"
        run_git("init", "-q", "--bare", "--initial-branch=main", str(bare))
        repo = Repo(self.git.url(f"{name}.git"), bare, work)
        head = repo.commit(
            {
                ".devcontainer/devcontainer.json": json.dumps(devcontainer),
                ".devcontainer/Dockerfile": "FROM base\n",
                "README": "one\n",
            },
            "initial",
        )
        return repo, head

    def add(self, **body: Any) -> dict[str, Any]:
        res = self.http.post("/v1/prebuilds", json=body)
        assert res.status_code == 201, res.text
        return dict(res.json())

    def builds(self, prebuild_id: str) -> list[dict[str, Any]]:
        res = self.http.get(f"/v1/prebuilds/{prebuild_id}/builds")
        assert res.status_code == 200, res.text
        return list(res.json()["builds"])

    def wait_build(self, prebuild_id: str, commit: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for build in self.builds(prebuild_id):
                if build["commit"] == commit and build["state"] in ("ready", "failed"):
                    return build
            time.sleep(0.5)
        raise AssertionError(f"no finished build of {commit}: {self.builds(prebuild_id)}")

    def deliver(self, provider: str, prebuild_id: str, body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
        return httpx.post(
            f"{self.server.url}/v1/webhooks/{provider}/{prebuild_id}",
            content=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=60,
        )

    def sandbox_count(self) -> int:
        return len(self.http.get("/v1/sandboxes").json()["sandboxes"])


def _github_headers(body: bytes, delivery: str, secret: str = HOOK_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
    }


def _push_body(sha: str, branch: str = "main") -> bytes:
    return json.dumps(
        {"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": sha, "commits": []}
    ).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, base_template: TemplateInfo) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("prebuilds")
    (tmp / "git").mkdir()
    git = GitHttpServer(tmp / "git").start()
    server = new_server(base_template)
    cache = base_template.rootfs.parent.parent  # the shared templates dir
    before = {path.name for path in cache.iterdir()}
    try:
        server.start()
        with server.client() as http:
            yield World(git, server, http, tmp)
    finally:
        shut_down(server)  # first: templates in use cannot be removed
        store = TemplateStore(Settings(data_dir=cache.parent))
        for info in store.list():  # the workspace templates the repositories built
            if info.name not in before and info.name.startswith("ws-"):
                store.remove(info.name)
        git.stop()


def _lines(sb: Sandbox, path: str) -> list[str]:
    result = sb.commands.run(f"cat {path} 2>/dev/null || true", user="root")
    return [line for line in result.stdout.splitlines() if line]


def test_a_signed_push_prebuilds_once_and_workspaces_start_from_it(world: World) -> None:
    repo, head = world.repo("app", DEVCONTAINER)
    secret = world.http.post(
        "/v1/secrets", json={"name": "prebuild-token", "kind": "git-token", "value": "tok-123"}
    )
    assert secret.status_code == 201, secret.text
    config = world.add(
        repo=repo.url,
        branch="main",
        webhook_provider="github",
        webhook_secret=HOOK_SECRET,
        env_secrets={"PREBUILD_TOKEN": "prebuild-token"},
    )
    assert config["webhook_path"] == f"/v1/webhooks/github/{config['id']}"
    body = _push_body(head)
    delivery = str(uuid.uuid4())
    first = world.deliver("github", config["id"], body, _github_headers(body, delivery))
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "queued"
    replay = world.deliver("github", config["id"], body, _github_headers(body, delivery))
    assert replay.status_code == 409 and replay.json()["code"] == "webhook_replayed"
    again = world.deliver("github", config["id"], body, _github_headers(body, str(uuid.uuid4())))
    assert again.status_code == 200 and again.json()["status"] == "duplicate"

    build = world.wait_build(config["id"], head)
    logs = world.http.get(
        f"/v1/prebuilds/{config['id']}/builds/{build['id']}/logs", params={"format": "text"}
    )
    assert build["state"] == "ready", logs.text
    assert build["snapshot_id"] and build["trigger"] == "webhook:github"
    assert [b["commit"] for b in world.builds(config["id"])] == [head]
    assert "[onCreateCommand]" in logs.text and "== succeeded" in logs.text
    assert "with memory" in logs.text  # gVisor saves memory: services keep running
    assert world.sandbox_count() == 0  # the build sandbox is gone

    sdk = {"api_url": world.server.url, "token": world.server.token}
    with Sandbox.create(repo=repo.url, ref="main", **sdk) as sb:
        ws = sb.info.workspace
        assert ws is not None and ws.status == "ready" and ws.commit == head
        raw = world.http.get(f"/v1/sandboxes/{sb.id}").json()["workspace"]
        assert raw["prebuild"] == {
            "id": config["id"],
            "build": build["id"],
            "commit": head,
            "snapshot": build["snapshot_id"],
        }
        # onCreateCommand ran once, in the prebuild, with the repository-scoped secret
        assert _lines(sb, "/var/tmp/on-create.log") == ["ran", "token=tok-123"]
        assert _lines(sb, "/var/tmp/update-content.log") == ["ran"]
        # postCreateCommand ran here, with the user's environment (not the prebuild's secret)
        assert _lines(sb, "/var/tmp/post-create.log") == ["ran token="]
        assert "PREBUILD_TOKEN" not in sb.commands.run("env").stdout
        assert sb.commands.run("git rev-parse --abbrev-ref HEAD").stdout.strip() == "main"
        # the process onCreateCommand started in the prebuild is running here
        assert sb.commands.run("pgrep -f 'sleep 4242'", user="root").exit_code == 0

    # opting out: cloned and set up from scratch
    with Sandbox.create(repo=repo.url, ref="main", prebuild=False, **sdk) as sb:
        raw = world.http.get(f"/v1/sandboxes/{sb.id}").json()["workspace"]
        assert raw.get("prebuild") is None
        assert _lines(sb, "/var/tmp/on-create.log") == ["ran", "token="]

    # a failing onCreateCommand: the build fails with its log; workspaces keep the old one
    bad = repo.commit({".devcontainer/devcontainer.json": json.dumps(FAILING)}, "break it")
    body = _push_body(bad)
    res = world.deliver("github", config["id"], body, _github_headers(body, str(uuid.uuid4())))
    assert res.json()["status"] == "queued"
    failed = world.wait_build(config["id"], bad)
    assert failed["state"] == "failed" and "exit code 3" in failed["error"]
    logs = world.http.get(
        f"/v1/prebuilds/{config['id']}/builds/{failed['id']}/logs", params={"format": "text"}
    )
    assert "about to fail" in logs.text
    assert world.sandbox_count() == 0
    listed = world.http.get(f"/v1/prebuilds/{config['id']}").json()
    assert listed["latest_ready"]["id"] == build["id"]
    with Sandbox.create(repo=repo.url, ref="main", **sdk) as sb:
        raw = world.http.get(f"/v1/sandboxes/{sb.id}").json()["workspace"]
        assert raw["prebuild"]["build"] == build["id"]
        # the branch moved on: fast-forwarded to its head, updateContentCommand again
        assert raw["commit"] == bad
        assert sb.commands.run("git rev-parse HEAD").stdout.strip() == bad
        assert _lines(sb, "/var/tmp/on-create.log") == ["ran", "token=tok-123"]
        assert _lines(sb, "/var/tmp/update-content.log") == ["ran", "ran"]

    deleted = world.http.delete(f"/v1/prebuilds/{config['id']}")
    assert deleted.status_code == 204
    snaps = world.http.get("/v1/snapshots").json()
    assert build["snapshot_id"] not in json.dumps(snaps)


def test_polling_picks_up_new_commits(world: World) -> None:
    repo, head = world.repo("polled", DEVCONTAINER)
    config = world.add(repo=repo.url, branch="main", poll_interval=1, keep=1)
    first = world.wait_build(config["id"], head)
    assert first["state"] == "ready" and first["trigger"] == "poll"
    newer = repo.commit({"README": "two\n"}, "second")
    second = world.wait_build(config["id"], newer)
    assert second["state"] == "ready" and second["trigger"] == "poll"
    states = {b["commit"]: b["state"] for b in world.builds(config["id"])}
    assert states == {head: "expired", newer: "ready"}  # keep=1
    assert world.http.delete(f"/v1/prebuilds/{config['id']}").status_code == 204


def test_a_force_pushed_branch_falls_back_to_a_full_set_up(world: World) -> None:
    repo, head = world.repo("rewritten", DEVCONTAINER)
    config = world.add(repo=repo.url, branch="main")
    run = world.http.post(f"/v1/prebuilds/{config['id']}/run")
    assert run.status_code == 202 and run.json()["created"], run.text
    assert world.wait_build(config["id"], head)["state"] == "ready"
    (repo.work / "README").write_text("rewritten\n")
    run_git("commit", "-q", "-a", "--amend", "-m", "rewritten", cwd=repo.work)
    run_git("push", "-q", "-f", str(repo.bare), "main", cwd=repo.work)
    rewritten = run_git("rev-parse", "HEAD", cwd=repo.work)
    sdk = {"api_url": world.server.url, "token": world.server.token}
    with Sandbox.create(repo=repo.url, ref="main", **sdk) as sb:
        raw = world.http.get(f"/v1/sandboxes/{sb.id}").json()["workspace"]
        assert raw.get("prebuild") is None and raw["commit"] == rewritten
        assert _lines(sb, "/var/tmp/on-create.log") == ["ran", "token="]  # ran here
    assert world.sandbox_count() == 0  # the abandoned one from the prebuild is gone
    assert "cannot be brought forward" in world.server.log_file.read_text()  # it was tried
    assert world.http.delete(f"/v1/prebuilds/{config['id']}").status_code == 204
