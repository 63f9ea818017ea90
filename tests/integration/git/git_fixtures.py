"""Fixtures for the git subsystem against real git servers on loopback.

Imported by name by the test modules beside it (not a ``conftest.py``: other
test modules import ``conftest`` by bare name, and a second one here would
shadow theirs).

``git_repos``: bare repositories built once per session (public, private,
a protocol-v0 one that refuses fetches by SHA, a private superproject with a
private submodule, one whose requests hang). ``http_git``: ``git
http-backend`` serving them (see ``tests/git_servers.py``). ``ssh_git``: a
real ``sshd`` (skipped on a machine without openssh-server, failed in CI).
``workdir``: a fresh directory per test, removed afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_support import skip_unless_ci
from git_servers import (
    GitHttpServer,
    GitRepos,
    SshGitServer,
    make_repo,
    make_superproject,
    sshd_path,
)


@pytest.fixture(scope="session", name="git_repos")
def git_repos_fixture() -> Iterator[GitRepos]:
    root = Path(tempfile.mkdtemp(prefix="atelier-gitsrv-"))
    try:
        lib = make_repo(root, "lib.git")
        v0 = make_repo(root, "v0.git", allow_sha=False)
        yield GitRepos(
            root=root,
            public=make_repo(root, "public.git"),
            private=make_repo(root, "private.git"),
            v0=v0,
            lib=lib,
            # the submodule is pinned at a commit that is no branch tip
            superproject=make_superproject(root, "super.git", "../lib.git", lib.main[1]),
            slow=make_repo(root, "slow.git"),
            v0_superproject=make_superproject(root, "v0super.git", "../v0.git", v0.main[1]),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", name="http_git")
def http_git_fixture(git_repos: GitRepos) -> Iterator[GitHttpServer]:
    server = GitHttpServer(git_repos.root, username="alice", token=f"tok-{uuid.uuid4().hex}")
    server.private |= {"private.git", "super.git", "lib.git"}
    server.protocol_v0.add("v0.git")
    server.hanging.add("slow.git")
    with server:
        yield server


@pytest.fixture(scope="session", name="ssh_git")
def ssh_git_fixture() -> Iterator[SshGitServer]:
    if sshd_path() is None:
        skip_unless_ci("sshd is not installed (openssh-server; scripts/setup.sh test-deps)")
    workdir = Path(tempfile.mkdtemp(prefix="atelier-sshd-"))
    try:
        with SshGitServer(workdir) as server:
            yield server
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(name="workdir")
def workdir_fixture() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atelier-gitclone-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
