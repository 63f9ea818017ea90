"""clone() over SSH against a real OpenSSH sshd on loopback."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from git_fixtures import (  # noqa: F401  (fixtures)
    git_repos_fixture,
    http_git_fixture,
    ssh_git_fixture,
    workdir_fixture,
)

from atelier.errors import (
    AtelierError,
    GitAuthenticationFailed,
    GitRepositoryNotFound,
    GitUnreachable,
)
from atelier.git import GitCredentials, clone
from git_servers import GitRepos, SshGitServer, free_port, make_repo, make_superproject


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(autouse=True)
def no_leftover_env_dirs() -> Iterator[None]:
    """The private key lives only in the clone's private HOME, which goes away."""
    before = set(Path(tempfile.gettempdir()).glob("atelier-git-*"))
    yield
    assert set(Path(tempfile.gettempdir()).glob("atelier-git-*")) <= before


def assert_no_clone(dest: Path) -> None:
    assert not dest.exists()
    assert list(dest.parent.glob(f".{dest.name}.clone-*")) == []


async def test_good_key_with_pinned_host_key(
    ssh_git: SshGitServer, git_repos: GitRepos, workdir: Path
) -> None:
    creds = GitCredentials(ssh_private_key=ssh_git.client_key, ssh_known_hosts=ssh_git.known_hosts)
    url = ssh_git.url(git_repos.public.path)
    repo = await clone(url, workdir / "c", credentials=creds)
    assert (repo.commit, repo.branch, repo.shallow) == (git_repos.public.head, "main", True)
    assert git(repo.path, "remote", "get-url", "origin") == url
    key_body = ssh_git.client_key.splitlines()[1]
    assert not [
        p for p in repo.path.rglob("*") if p.is_file() and key_body in p.read_text("latin-1")
    ]


async def test_ref_and_full_history_over_ssh(
    ssh_git: SshGitServer, git_repos: GitRepos, workdir: Path
) -> None:
    creds = GitCredentials(ssh_private_key=ssh_git.client_key, ssh_known_hosts=ssh_git.known_hosts)
    sha = git_repos.public.main[1]
    repo = await clone(
        ssh_git.url(git_repos.public.path), workdir / "c", ref=sha, depth=None, credentials=creds
    )
    assert repo.commit == sha and not repo.shallow


async def test_unknown_host_key_is_accepted_when_none_pinned(
    ssh_git: SshGitServer, git_repos: GitRepos, workdir: Path
) -> None:
    creds = GitCredentials(ssh_private_key=ssh_git.client_key)
    repo = await clone(ssh_git.url(git_repos.public.path), workdir / "c", credentials=creds)
    assert repo.commit == git_repos.public.head


async def _fails(url: str, dest: Path, creds: GitCredentials | None) -> AtelierError:
    with pytest.raises(AtelierError) as info:
        await clone(url, dest, credentials=creds, timeout=60)
    assert_no_clone(dest)
    return info.value


async def test_wrong_key(ssh_git: SshGitServer, git_repos: GitRepos, workdir: Path) -> None:
    creds = GitCredentials(ssh_private_key=ssh_git.other_key, ssh_known_hosts=ssh_git.known_hosts)
    err = await _fails(ssh_git.url(git_repos.public.path), workdir / "c", creds)
    assert type(err) is GitAuthenticationFailed, err
    assert "PRIVATE KEY" not in str(err) + repr(err.details)


async def test_no_key(ssh_git: SshGitServer, git_repos: GitRepos, workdir: Path) -> None:
    creds = GitCredentials(ssh_known_hosts=ssh_git.known_hosts)
    err = await _fails(ssh_git.url(git_repos.public.path), workdir / "c", creds)
    assert type(err) is GitAuthenticationFailed, err


async def test_host_key_mismatch_refuses_to_connect(
    ssh_git: SshGitServer, git_repos: GitRepos, workdir: Path
) -> None:
    other = ssh_git.known_hosts.split()[0] + " " + ssh_git.client_key_public
    creds = GitCredentials(ssh_private_key=ssh_git.client_key, ssh_known_hosts=other)
    err = await _fails(ssh_git.url(git_repos.public.path), workdir / "c", creds)
    assert type(err) is GitUnreachable, err
    assert "host key" in err.message


async def test_missing_repository(
    ssh_git: SshGitServer, git_repos: GitRepos, workdir: Path
) -> None:
    creds = GitCredentials(ssh_private_key=ssh_git.client_key, ssh_known_hosts=ssh_git.known_hosts)
    err = await _fails(ssh_git.url(git_repos.root / "nope.git"), workdir / "c", creds)
    assert type(err) is GitRepositoryNotFound, err


async def test_closed_port(ssh_git: SshGitServer, git_repos: GitRepos, workdir: Path) -> None:
    creds = GitCredentials(ssh_private_key=ssh_git.client_key)
    url = f"ssh://root@127.0.0.1:{free_port()}{git_repos.public.path}"
    err = await _fails(url, workdir / "c", creds)
    assert type(err) is GitUnreachable, err


async def test_key_is_offered_only_to_the_remote_host(
    ssh_git: SshGitServer, git_repos: GitRepos, workdir: Path
) -> None:
    # A submodule on another SSH host (here: "localhost", same server) gets no key.
    lib = make_repo(workdir / "srv", "lib.git")
    other_host = f"ssh://root@localhost:{ssh_git.port}{lib.path}"
    sup = make_superproject(workdir / "srv", "super.git", other_host, lib.head)
    creds = GitCredentials(ssh_private_key=ssh_git.client_key)
    err = await _fails(ssh_git.url(sup.path), workdir / "c", creds)
    assert type(err) is GitAuthenticationFailed, err
    assert "submodules" in err.message
