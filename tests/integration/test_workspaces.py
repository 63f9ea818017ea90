"""Workspaces from git repositories, end to end, with nothing but loopback.

A real git server (``git http-backend``, one private repository behind HTTP
Basic auth) serves repositories the tests publish; a real ``docker-registry``
holds a busybox image that ``devcontainer.json`` names through a registry
that does not exist (``registry.example.com``), rewritten by the configured
mirror: the air-gapped path. A real server creates the workspaces in gVisor
sandboxes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_harness import ServerProcess, new_server, shut_down

from atelier import GitAuth, Sandbox
from atelier.config import Settings
from atelier.errors import (
    Conflict,
    GitAuthenticationFailed,
    GitRepositoryNotFound,
    InvalidRequest,
    ValidationFailed,
    WorkspaceSetupFailed,
)
from atelier.images.store import TemplateInfo, TemplateStore
from ci_support import skip_unless_ci
from git_servers import GitHttpServer, SshGitServer, run_git, sshd_path
from oci_registry import Registry, busybox_rootfs, need_tools, run, start_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGE = "registry.example.com/tools/busybox:1"  # only reachable through the mirror
TOKEN = "s3cr3t-workspace-token"


@dataclass
class World:
    git: GitHttpServer
    registry: Registry
    server: ServerProcess

    def publish(self, name: str, files: dict[str, str], *, private: bool = False) -> str:
        """A repository ``name`` with ``files`` in one commit on main; its URL."""
        with tempfile.TemporaryDirectory(prefix="ws-work-") as tmp:
            work = Path(tmp)
            run_git("init", "-q", "--initial-branch=main", str(work))
            for path, text in files.items():
                target = work / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            run_git("add", "-A", cwd=work)
            run_git("commit", "-q", "-m", "initial", cwd=work)
            bare = self.git.root / f"{name}.git"
            run_git("init", "-q", "--bare", "--initial-branch=main", str(bare))
            run_git("push", "-q", "--mirror", str(bare), cwd=work)
        if private:
            self.git.private.add(f"{name}.git")
        return self.git.url(f"{name}.git")

    def sandbox_ids(self) -> set[str]:
        with self.server.client() as http:
            return {s["id"] for s in http.get("/v1/sandboxes").json()["sandboxes"]}


def _push_busybox_image(work: Path, registry: Registry) -> None:
    layout, rootfs = work / "layout", work / "rootfs"
    busybox_rootfs(rootfs)
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:one")
    run("umoci", "insert", "--image", f"{layout}:one", rootfs, "/")
    run("umoci", "config", "--image", f"{layout}:one", "--config.env", "FROM_IMAGE=yes")
    run(
        "skopeo", "copy", "--dest-tls-verify=false",
        f"oci:{layout}:one", f"docker://{registry.addr}/tools/busybox:1",
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, base_template: TemplateInfo) -> Iterator[World]:
    need_tools()
    work = tmp_path_factory.mktemp("workspaces")
    registry = start_registry(work, "ws", work / "storage", None)
    git = GitHttpServer(work / "git", username="alice", token=TOKEN)
    (work / "git").mkdir()
    server: ServerProcess | None = None
    before = {path.name for path in base_template.rootfs.parent.parent.iterdir()}
    try:
        _push_busybox_image(work, registry)
        git.start()
        server = new_server(
            base_template,
            ATELIER_REGISTRY_MIRRORS=json.dumps({"registry.example.com/*": f"{registry.addr}/*"}),
            ATELIER_INSECURE_REGISTRIES=registry.addr,
        )
        server.start()
        yield World(git, registry, server)
    finally:
        if server is not None:
            shut_down(server)  # first: templates in use cannot be removed
            cache = base_template.rootfs.parent.parent  # the shared templates dir
            store = TemplateStore(Settings(data_dir=cache.parent))
            for info in store.list():  # what the workspaces pulled and built
                if info.name not in before and info.name.startswith(("img-", "ws-", "wsf-")):
                    store.remove(info.name)
        git.stop()
        registry.proc.terminate()
        try:
            registry.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            registry.proc.kill()


@pytest.fixture
def sdk(world: World) -> dict[str, str]:
    return {"api_url": world.server.url, "token": world.server.token}


def test_a_repository_without_configuration_runs_on_the_default_template(
    world: World, sdk: dict[str, str]
) -> None:
    url = world.publish("plain", {"README.md": "# plain\n", "src/app.py": "print(42)\n"})
    with Sandbox.create(repo=url, **sdk) as sb:
        ws = sb.info.workspace
        assert ws is not None
        assert (ws.folder, ws.status, ws.branch, ws.devcontainer) == (
            "/workspaces/plain",
            "ready",
            "main",
            None,
        )
        assert sb.info.template == "base"
        # commands run in the working tree by default
        assert sb.commands.run("cat src/app.py").stdout == "print(42)\n"
        status = sb.git.status()
        assert status.branch == "main" and status.clean
        sb.files.write("/workspaces/plain/new.txt", "hello\n")
        assert [f.path for f in sb.git.status().files] == ["new.txt"]
        sb.git.add(["new.txt"])
        commit = sb.git.commit("add new.txt", author_name="Ada", author_email="ada@example.org")
        assert sb.commands.run("git log -1 --format=%H%n%an").stdout.split() == [commit, "Ada"]
        assert sb.git.branches() == ["main"]
        assert ws.commit and ws.commit != commit


DEVCONTAINER = {
    "image": IMAGE,
    "remoteUser": "user",
    "containerEnv": {"APP_MODE": "dev", "GREETING_FROM": "${localEnv:WHO}"},
    "remoteEnv": {"MODE_COPY": "${containerEnv:APP_MODE}"},
    "hostRequirements": {"memory": "1gb"},
    "forwardPorts": [8000],
    "onCreateCommand": "date +%s >> /tmp/order && echo onCreate >> /tmp/order",
    "updateContentCommand": ["sh", "-c", "echo updateContent >> /tmp/order"],
    "postCreateCommand": {
        "slow": "sleep 2 && echo postCreate-slow >> /tmp/order",
        "fast": "echo postCreate-fast >> /tmp/order",
    },
    "postStartCommand": "echo postStart >> /tmp/order",
    "postAttachCommand": "echo postAttach >> /tmp/order",
    "waitFor": "updateContentCommand",
}


def _wait_ready(sb: Sandbox, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = sb.get_info()
        if info.workspace is not None and info.workspace.status in ("ready", "failed"):
            return
        time.sleep(0.2)
    raise AssertionError(f"workspace never became ready: {sb.info.workspace}")


def test_devcontainer_image_from_the_mirror_env_user_and_lifecycle_order(
    world: World, sdk: dict[str, str]
) -> None:
    url = world.publish(
        "app",
        {
            ".devcontainer/devcontainer.json": "// comments are fine\n"
            + json.dumps(DEVCONTAINER, indent=2),
            "Makefile": "all:\n",
        },
    )
    with Sandbox.create(repo=url, local_env={"WHO": "tester"}, **sdk) as sb:
        ws = sb.info.workspace
        assert ws is not None and ws.devcontainer == ".devcontainer/devcontainer.json"
        assert sb.info.template.startswith("img-")  # pulled through the mirror
        assert sb.info.memory_mib >= 1024  # hostRequirements
        assert ws.forward_ports == ["8000"]
        # waitFor updateContentCommand: create returned before postCreate finished
        first = sb.commands.run("cat /tmp/order").stdout.split()
        assert first[1:3] == ["onCreate", "updateContent"] and "postCreate-slow" not in first
        _wait_ready(sb)
        ws = sb.info.workspace
        assert ws is not None and ws.status == "ready", sb.logs()
        order = sb.commands.run("cat /tmp/order").stdout.split()[1:]
        assert order[:2] == ["onCreate", "updateContent"]
        assert sorted(order[2:4]) == ["postCreate-fast", "postCreate-slow"]
        assert order[4:] == ["postStart", "postAttach"]
        assert int(first[0]) <= int(time.time())  # the timestamp the first hook wrote
        hooks = [step["hook"] for step in ws.lifecycle]
        assert hooks == [
            "onCreateCommand",
            "updateContentCommand",
            "postCreateCommand",
            "postStartCommand",
            "postAttachCommand",
        ]
        assert all(step["status"] == "succeeded" for step in ws.lifecycle)
        starts = [step["started_at"] for step in ws.lifecycle]
        assert starts == sorted(starts)
        # the environment: image Env, containerEnv (with localEnv), remoteEnv
        env = sb.commands.run("echo $FROM_IMAGE $APP_MODE $GREETING_FROM $MODE_COPY").stdout
        assert env.split() == ["yes", "dev", "tester", "dev"]
        # remoteUser runs commands and owns the working tree
        assert sb.commands.run("id -un; stat -c %U Makefile").stdout.split() == ["user", "user"]
        # a later start runs postStartCommand and postAttachCommand again, and only those
        sb.stop()
        sb.start()
        _wait_ready(sb)
        again = sb.commands.run("cat /tmp/order").stdout.split()[1:]
        assert again == [*order, "postStart", "postAttach"], sb.logs()


def test_a_failing_post_create_command_leaves_the_workspace_in_error_with_its_output(
    world: World, sdk: dict[str, str]
) -> None:
    config = {
        "image": IMAGE,
        "postCreateCommand": "echo about to fail; echo details >&2; exit 4",
        "waitFor": "postCreateCommand",
    }
    url = world.publish("failing", {".devcontainer.json": json.dumps(config)})
    with pytest.raises(WorkspaceSetupFailed) as caught:
        Sandbox.create(repo=url, **sdk)
    details = caught.value.details
    assert details["exit_code"] == 4 and details["hook"] == "postCreateCommand"
    assert "about to fail" in details["output"] and "details" in details["output"]
    sb = Sandbox.connect(details["sandbox_id"], **sdk)
    try:
        assert sb.info.state == "error"
        assert sb.info.workspace is not None and sb.info.workspace.status == "failed"
        assert "about to fail" in sb.logs()
    finally:
        sb.kill()


def test_bad_repositories_and_configurations_leave_nothing_behind(
    world: World, sdk: dict[str, str]
) -> None:
    before = world.sandbox_ids()
    with pytest.raises(GitRepositoryNotFound):
        Sandbox.create(repo=world.git.url("missing.git"), **sdk)
    broken = world.publish("broken", {".devcontainer.json": '{"image": "x",, }'})
    with pytest.raises(ValidationFailed, match="line 1"):
        Sandbox.create(repo=broken, **sdk)
    schema = world.publish("schema", {".devcontainer.json": '{"image": 42}'})
    with pytest.raises(ValidationFailed, match="image"):
        Sandbox.create(repo=schema, **sdk)
    no_dockerfile = world.publish(
        "nodockerfile", {".devcontainer/devcontainer.json": '{"build": {"dockerfile": "Nope"}}'}
    )
    with pytest.raises(ValidationFailed, match="Nope"):
        Sandbox.create(repo=no_dockerfile, **sdk)
    private = world.publish("private", {"README": "secret\n"}, private=True)
    with pytest.raises(GitAuthenticationFailed) as caught:
        Sandbox.create(repo=private, git_auth=GitAuth(token="wrong"), **sdk)
    assert "wrong" not in str(caught.value.to_payload())
    assert world.sandbox_ids() == before
    staging = world.server.data_dir / "workspaces"
    assert not [p for p in staging.glob(".*")], "a clone was left behind"


def test_a_private_repository_with_a_token_and_git_clone_into_a_sandbox(
    world: World, sdk: dict[str, str]
) -> None:
    private = world.publish("secret-app", {"README": "secret\n"}, private=True)
    auth = GitAuth(username="alice", token=TOKEN)
    with Sandbox.create(repo=private, git_auth=auth, **sdk) as sb:
        assert sb.commands.run("cat README").stdout == "secret\n"
        remote = sb.commands.run("git remote get-url origin; cat .git/config").stdout
        assert TOKEN not in remote and TOKEN not in sb.logs()
        other = world.publish("lib", {"lib.txt": "library\n"})
        result = sb.git.clone(other, "/workspaces/lib")
        assert result["path"] == "/workspaces/lib"
        assert sb.commands.run("cat /workspaces/lib/lib.txt").stdout == "library\n"


ATELIER = str(Path(sys.executable).with_name("atelier"))


def test_atelier_up_prints_the_id_and_errors_are_one_line(world: World) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ATELIER_CONFIG"}
    env.update(ATELIER_URL=world.server.url, ATELIER_TOKEN=world.server.token)
    url = world.publish("cli-app", {"README": "cli\n"})
    done = subprocess.run(
        [ATELIER, "up", url, "--ref", "main"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    sandbox_id = done.stdout.strip()
    assert re.fullmatch(r"sb-[0-9a-z]+", sandbox_id), done.stdout
    try:
        shown = subprocess.run(
            [ATELIER, "exec", sandbox_id, "--", "cat", "README"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.stdout == "cli\n"
    finally:
        with world.server.client() as http:
            http.delete(f"/v1/sandboxes/{sandbox_id}")
    bad = subprocess.run(
        [ATELIER, "up", world.git.url("nope.git")], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: ") and bad.stderr.endswith("(git_repo_not_found)\n")
    assert bad.stderr.count("\n") == 1


def test_a_dockerfile_build_with_a_local_feature(world: World, sdk: dict[str, str]) -> None:
    feature = {
        "id": "hello",
        "version": "1.0.0",
        "options": {"greeting": {"type": "string", "default": "hi"}},
        "containerEnv": {"HELLO_HOME": "/opt/hello"},
    }
    url = world.publish(
        "built",
        {
            ".devcontainer/devcontainer.json": json.dumps(
                {
                    "build": {"dockerfile": "Dockerfile", "args": {"FLAVOUR": "blue"}},
                    "features": {"./hello": {"greeting": "hey there"}},
                    "postCreateCommand": "cat /built /greeting > /tmp/seen",
                    "waitFor": "postCreateCommand",
                }
            ),
            ".devcontainer/Dockerfile": "FROM base\nARG FLAVOUR\n"
            + "RUN echo built-$FLAVOUR > /built\n",
            ".devcontainer/hello/devcontainer-feature.json": json.dumps(feature),
            ".devcontainer/hello/install.sh": '#!/bin/sh\nset -e\necho "$GREETING" > /greeting\n',
        },
    )
    with Sandbox.create(repo=url, **sdk) as sb:
        assert sb.info.template.startswith("wsf-"), sb.info.template
        assert sb.commands.run("cat /tmp/seen").stdout == "built-blue\nhey there\n"
        assert sb.commands.run("echo $HELLO_HOME").stdout == "/opt/hello\n"
        assert not sb.files.exists("/var/tmp/atelier-features")


def test_push_and_pull_go_through_the_server_with_the_callers_token(
    world: World, sdk: dict[str, str], tmp_path: Path
) -> None:
    url = world.publish("pushable", {"README": "v1\n"}, private=True)
    bare = world.git.root / "pushable.git"
    auth = GitAuth(username="alice", token=TOKEN)
    with Sandbox.create(repo=url, git_auth=auth, **sdk) as sb:
        sb.files.write("/workspaces/pushable/NEW", "from the sandbox\n")
        sb.git.add(["NEW"])
        mine = sb.git.commit("sandbox work", author_name="Ada", author_email="ada@example.org")
        with pytest.raises(GitAuthenticationFailed):
            sb.git.push(auth=GitAuth(username="alice", token="wrong"))
        pushed = sb.git.push(auth=auth)
        assert (pushed.branch, pushed.commit, pushed.updated) == ("main", mine, True)
        assert run_git("--git-dir", str(bare), "rev-parse", "main") == mine
        assert sb.git.status().ahead == 0
        assert not sb.git.push(auth=auth).updated  # nothing new
        # someone else pushes to the remote; the sandbox pulls it
        work = tmp_path / "other"
        run_git("clone", "-q", str(bare), str(work))
        (work / "OTHER").write_text("from elsewhere\n")
        run_git("add", "OTHER", cwd=work)
        run_git("commit", "-q", "-m", "other work", cwd=work)
        run_git("push", "-q", "origin", "main", cwd=work)
        theirs = run_git("rev-parse", "HEAD", cwd=work)
        # a diverged push is refused until the sandbox pulls
        sb.files.write("/workspaces/pushable/NEW", "changed\n")
        sb.git.add(["NEW"])
        sb.git.commit("more", author_name="Ada", author_email="ada@example.org")
        with pytest.raises(Conflict, match="pull first"):
            sb.git.push(auth=auth)
        sb.commands.run("git reset -q --hard HEAD~1")
        pulled = sb.git.pull(auth=auth)
        assert (pulled.commit, pulled.updated) == (theirs, True)
        assert sb.commands.run("cat OTHER").stdout == "from elsewhere\n"
        assert TOKEN not in sb.commands.run("cat .git/config; git log --all --format=%B").stdout


def test_atelier_up_over_ssh_with_a_key_and_pinned_host(
    world: World, tmp_path: Path, sdk: dict[str, str]
) -> None:
    if sshd_path() is None:
        skip_unless_ci("sshd is not installed (openssh-server; scripts/setup.sh test-deps)")
    world.publish("over-ssh", {"README": "via ssh\n"})
    bare = world.git.root / "over-ssh.git"
    with SshGitServer(tmp_path / "sshd") as ssh:
        url = ssh.url(bare)
        good = GitAuth(ssh_private_key=ssh.client_key, ssh_known_hosts=ssh.known_hosts)
        with Sandbox.create(repo=url, git_auth=good, **sdk) as sb:
            assert sb.info.workspace is not None
            assert sb.info.workspace.folder == "/workspaces/over-ssh"
            assert sb.commands.run("cat README").stdout == "via ssh\n"
            assert "PRIVATE KEY" not in sb.commands.run("cat .git/config").stdout
        before = world.sandbox_ids()
        wrong = GitAuth(ssh_private_key=ssh.other_key, ssh_known_hosts=ssh.known_hosts)
        with pytest.raises(GitAuthenticationFailed):
            Sandbox.create(repo=url, git_auth=wrong, **sdk)
        assert world.sandbox_ids() == before


def test_a_stored_secret_for_the_host_is_used_and_only_by_its_owner(
    world: World, sdk: dict[str, str]
) -> None:
    url = world.publish("stored-secret", {"README": "stored\n"}, private=True)
    host = f"127.0.0.1:{world.git.port}"
    env = {k: v for k, v in os.environ.items() if k != "ATELIER_CONFIG"}
    env.update(ATELIER_URL=world.server.url, ATELIER_TOKEN=world.server.token, GIT_TOKEN=TOKEN)
    stored = subprocess.run(
        [ATELIER, "secret", "set", "local-git", "--token-env", "GIT_TOKEN", "--host", host,
         "--username", "alice"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    assert TOKEN not in stored.stdout + stored.stderr
    with world.server.client() as http:
        listed = http.get("/v1/secrets").json()["secrets"]
        assert [(s["name"], s["host"]) for s in listed] == [("local-git", host)]
        assert TOKEN not in json.dumps(listed)
        other = http.post("/v1/tokens", json={"name": "someone-else"}).json()["token"]
    try:
        with Sandbox.create(repo=url, **sdk) as sb:  # no credentials given: the stored secret
            assert sb.commands.run("cat README").stdout == "stored\n"
        with pytest.raises(GitAuthenticationFailed):
            Sandbox.create(repo=url, api_url=world.server.url, token=other)
    finally:
        with world.server.client() as http:
            assert http.delete("/v1/secrets/local-git").status_code == 204


def test_a_repository_with_several_configurations_needs_a_choice(
    world: World, sdk: dict[str, str]
) -> None:
    def config(name: str) -> str:
        return json.dumps(
            {"build": {"dockerfile": "../Dockerfile"}, "containerEnv": {"WHICH": name}}
        )

    url = world.publish(
        "several",
        {
            ".devcontainer/Dockerfile": "FROM base\n",
            ".devcontainer/python/devcontainer.json": config("python"),
            ".devcontainer/node/devcontainer.json": config("node"),
        },
    )
    with pytest.raises(InvalidRequest) as caught:
        Sandbox.create(repo=url, **sdk)
    assert "node" in caught.value.message and "python" in caught.value.message
    with Sandbox.create(repo=url, devcontainer="python", **sdk) as sb:
        assert sb.info.workspace is not None
        assert sb.info.workspace.devcontainer == ".devcontainer/python/devcontainer.json"
        assert sb.commands.run("echo $WHICH").stdout == "python\n"
