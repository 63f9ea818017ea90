"""A workspace whose devcontainer.json names Features from an OCI registry, end to end.

A real git server serves the repository; a real ``docker-registry`` on loopback
holds two Feature artifacts (``hello``, which ``dependsOn`` ``base-tools``),
reached as ``ghcr.io/acme/features/...`` through the server's mirror rule; a
real server fetches them, builds them into a ``wsf-`` template and boots the
workspace in gVisor.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_harness import ServerProcess, new_server, shut_down
from test_feature_fetching import feature_layout, feature_tar, push_feature

from atelier import Sandbox
from atelier.config import Settings
from atelier.errors import AtelierError
from atelier.images.store import TemplateStore
from git_servers import GitHttpServer, run_git
from oci_registry import Registry, need_tools, start_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_TOOLS = {"id": "base-tools", "version": "1.0.0"}
HELLO = {
    "id": "hello",
    "version": "1.0.0",
    "options": {"greeting": {"type": "string", "default": "hi"}},
    "containerEnv": {"HELLO_HOME": "/opt/hello"},
    "dependsOn": {"ghcr.io/acme/features/base-tools:1": {}},
}
BASE_INSTALL = "#!/bin/sh\nset -e\necho tools > /usr/local/share/base-tools\n"
HELLO_INSTALL = (  # fails unless base-tools installed first
    "#!/bin/sh\nset -e\ncat /usr/local/share/base-tools\n"
    'echo "$GREETING from $_REMOTE_USER" > /usr/local/share/hello-greeting\n'
)


@dataclass
class World:
    git: GitHttpServer
    registry: Registry
    server: ServerProcess


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, base_template: object) -> Iterator[World]:
    need_tools()
    work = tmp_path_factory.mktemp("ws-features")
    registry = start_registry(work, "features", work / "storage", None)
    git = GitHttpServer(work / "git", username="alice", token="unused-token")
    (work / "git").mkdir()
    server: ServerProcess | None = None
    try:
        for name, metadata, install in (
            ("hello", HELLO, HELLO_INSTALL),
            ("base-tools", BASE_TOOLS, BASE_INSTALL),
        ):
            feature_layout(work / name, {"1": feature_tar(metadata, install, gz=True)})
            push_feature(work / name, "1", registry.addr, f"acme/features/{name}")
        git.start()
        server = new_server(
            base_template,  # type: ignore[arg-type]
            ATELIER_REGISTRY_MIRRORS=json.dumps({"ghcr.io/*": f"{registry.addr}/*"}),
            ATELIER_INSECURE_REGISTRIES=registry.addr,
        )
        server.start()
        yield World(git, registry, server)
    finally:
        if server is not None:
            shut_down(server)
            _remove_built_templates(server)
        git.stop()
        registry.proc.terminate()
        try:
            registry.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            registry.proc.kill()
            registry.proc.wait()


def _remove_built_templates(server: ServerProcess) -> None:
    """Remove the ws-/wsf- templates this server built from the shared template cache."""
    settings = Settings(data_dir=server.templates_cache.parent)
    store = TemplateStore(settings)
    for info in store.list():
        path = settings.templates_dir / info.name / "manifest.json"
        with contextlib.suppress(OSError, ValueError):
            context = str(json.loads(path.read_text()).get("context", ""))
            if context.startswith(str(server.data_dir)):
                with contextlib.suppress(AtelierError):
                    store.remove(info.name)
                (settings.templates_dir / f".{info.name}.lock").unlink(missing_ok=True)


def publish(world: World, name: str, files: dict[str, str]) -> str:
    with tempfile.TemporaryDirectory(prefix="ws-work-") as tmp:
        work = Path(tmp)
        run_git("init", "-q", "--initial-branch=main", str(work))
        for path, text in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
        run_git("add", "-A", cwd=work)
        run_git("commit", "-q", "-m", "initial", cwd=work)
        bare = world.git.root / f"{name}.git"
        run_git("init", "-q", "--bare", "--initial-branch=main", str(bare))
        run_git("push", "-q", "--mirror", str(bare), cwd=work)
    return world.git.url(f"{name}.git")


def test_a_workspace_installs_features_from_a_mirrored_registry(world: World) -> None:
    url = publish(
        world,
        "featured",
        {
            ".devcontainer/devcontainer.json": json.dumps(
                {
                    "build": {"dockerfile": "Dockerfile"},
                    "remoteUser": "root",
                    "features": {"ghcr.io/acme/features/hello:1": {"greeting": "hey"}},
                }
            ),
            ".devcontainer/Dockerfile": "FROM base\n",
        },
    )
    sdk = {"api_url": world.server.url, "token": world.server.token}
    with Sandbox.create(repo=url, **sdk) as sb:
        assert sb.info.template.startswith("wsf-"), sb.info.template
        seen = sb.commands.run("cat /usr/local/share/base-tools /usr/local/share/hello-greeting")
        assert seen.stdout == "tools\nhey from root\n"
        assert sb.commands.run("echo $HELLO_HOME").stdout == "/opt/hello\n"
        assert not sb.files.exists("/var/tmp/atelier-features")
    cache = world.server.data_dir / "features" / "sha256"
    assert len(list(cache.iterdir())) == 2  # both Features, fetched once, kept by digest
    # a second workspace of the same configuration fetches nothing new
    with Sandbox.create(repo=url, **sdk) as sb:
        assert sb.commands.run("cat /usr/local/share/hello-greeting").stdout == "hey from root\n"
    assert len(list(cache.iterdir())) == 2
