"""clone() against ``git http-backend`` on loopback: refs, depth, submodules,
credentials (and where they must never appear), failures and timeouts."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
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
    GitRefNotFound,
    GitRepositoryNotFound,
    GitUnreachable,
)
from atelier.git import ClonedRepo, GitCredentials, clone, parse_git_url
from git_servers import GitHttpServer, GitRepos, free_port


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _env_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("atelier-git-*")}


@pytest.fixture(autouse=True)
def no_leftover_env_dirs() -> Iterator[None]:
    """Every clone removes its private HOME (config, key), success or not."""
    before = _env_dirs()
    yield
    assert _env_dirs() <= before


def creds(server: GitHttpServer) -> GitCredentials:
    return GitCredentials(username=server.username, token=server.token)


def assert_no_clone(dest: Path) -> None:
    assert not dest.exists()
    assert list(dest.parent.glob(f".{dest.name}.clone-*")) == []


def contains(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# ----------------------------------------------------------------- success


async def test_public_default_branch_is_shallow(
    http_git: GitHttpServer, git_repos: GitRepos, workdir: Path
) -> None:
    dest = workdir / "c"
    lines: list[str] = []
    repo = await clone(http_git.url("public.git"), dest, on_output=lines.append)
    assert repo == ClonedRepo(dest, git_repos.public.head, None, "main", True)
    assert (dest / "file.txt").read_text() == "version 3\n"
    assert git(dest, "rev-list", "--count", "HEAD") == "1"
    assert git(dest, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(dest, "rev-parse", "--abbrev-ref", "main@{upstream}") == "origin/main"
    assert git(dest, "remote", "get-url", "origin") == http_git.url("public.git")
    assert git(dest, "status", "--porcelain") == ""
    assert lines, "progress lines reach on_output"


async def test_full_history(http_git: GitHttpServer, git_repos: GitRepos, workdir: Path) -> None:
    repo = await clone(http_git.url("public.git"), workdir / "c", depth=None)
    assert not repo.shallow
    assert git(repo.path, "rev-list", "--count", "HEAD") == "4"


async def test_depth_two(http_git: GitHttpServer, workdir: Path) -> None:
    repo = await clone(http_git.url("public.git"), workdir / "c", depth=2)
    assert repo.shallow and git(repo.path, "rev-list", "--count", "HEAD") == "2"


async def test_branch(http_git: GitHttpServer, git_repos: GitRepos, workdir: Path) -> None:
    repo = await clone(http_git.url("public.git"), workdir / "c", ref="feature")
    assert (repo.commit, repo.branch, repo.ref) == (git_repos.public.feature, "feature", "feature")
    assert (repo.path / "feature.txt").exists()


@pytest.mark.parametrize("tag", ["v1.0", "v2.0"])  # lightweight and annotated
async def test_tag(http_git: GitHttpServer, git_repos: GitRepos, workdir: Path, tag: str) -> None:
    repo = await clone(http_git.url("public.git"), workdir / "c", ref=tag)
    assert repo.commit == git_repos.public.tags[tag]
    assert repo.branch is None and repo.shallow


async def test_commit_sha_not_at_any_tip(
    http_git: GitHttpServer, git_repos: GitRepos, workdir: Path
) -> None:
    sha = git_repos.public.main[1]
    repo = await clone(http_git.url("public.git"), workdir / "c", ref=sha)
    assert (repo.commit, repo.branch, repo.shallow) == (sha, None, True)
    assert (repo.path / "file.txt").read_text() == "version 1\n"


async def test_abbreviated_sha(http_git: GitHttpServer, git_repos: GitRepos, workdir: Path) -> None:
    sha = git_repos.public.main[1]
    repo = await clone(http_git.url("public.git"), workdir / "c", ref=sha[:9])
    assert repo.commit == sha and repo.ref == sha[:9]


async def test_sha_falls_back_to_full_fetch_when_server_refuses(
    http_git: GitHttpServer, git_repos: GitRepos, workdir: Path
) -> None:
    sha = git_repos.v0.main[1]  # protocol v0, no *SHA1InWant: a direct fetch is refused
    lines: list[str] = []
    repo = await clone(http_git.url("v0.git"), workdir / "c", ref=sha, on_output=lines.append)
    assert repo.commit == sha and not repo.shallow
    assert any("refused a fetch by commit id" in line for line in lines)


async def test_missing_sha(http_git: GitHttpServer, workdir: Path) -> None:
    dest = workdir / "c"
    with pytest.raises(GitRefNotFound):
        await clone(http_git.url("public.git"), dest, ref="0123456789" * 4)
    assert_no_clone(dest)


async def test_into_existing_empty_directory(http_git: GitHttpServer, workdir: Path) -> None:
    dest = workdir / "empty"
    dest.mkdir()
    repo = await clone(http_git.url("public.git"), dest)
    assert (repo.path / "file.txt").exists()


async def test_private_with_token(http_git: GitHttpServer, workdir: Path) -> None:
    lines: list[str] = []
    repo = await clone(
        http_git.url("private.git"),
        workdir / "c",
        credentials=creds(http_git),
        on_output=lines.append,
    )
    assert repo.branch == "main"
    assert contains(repo.path, http_git.token) == []  # not in .git/config, FETCH_HEAD, ...
    assert http_git.token not in git(repo.path, "config", "--list", "--show-origin")
    assert all(http_git.token not in line for line in lines)


async def test_token_never_in_argv(http_git: GitHttpServer, workdir: Path) -> None:
    token = http_git.token.encode()
    leaks: list[str] = []
    probes: list[int] = []

    def probe() -> None:  # runs while git is talking to the server
        probes.append(1)
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and token in (proc / "cmdline").read_bytes():
                    leaks.append((proc / "cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                continue

    http_git.probe = probe
    try:
        await clone(http_git.url("super.git"), workdir / "c", credentials=creds(http_git))
    finally:
        http_git.probe = None
    assert len(probes) > 3  # superproject and submodule requests were inspected
    assert leaks == []


async def test_submodules_reuse_credentials_and_are_shallow(
    http_git: GitHttpServer, git_repos: GitRepos, workdir: Path
) -> None:
    repo = await clone(http_git.url("super.git"), workdir / "c", credentials=creds(http_git))
    lib = repo.path / "lib"
    assert git(lib, "rev-parse", "HEAD") == git_repos.lib.main[1]
    assert (lib / "file.txt").read_text() == "version 1\n"
    assert git(lib, "rev-parse", "--is-shallow-repository") == "true"
    assert contains(repo.path, http_git.token) == []
    sub_url = git(repo.path, "config", "--file", ".git/modules/lib/config", "remote.origin.url")
    assert sub_url == http_git.url("lib.git")


async def test_submodule_commit_refused_shallow_is_fetched_in_full(
    http_git: GitHttpServer, git_repos: GitRepos, workdir: Path
) -> None:
    lines: list[str] = []
    repo = await clone(http_git.url("v0super.git"), workdir / "c", on_output=lines.append)
    lib = repo.path / "lib"
    assert git(lib, "rev-parse", "HEAD") == git_repos.v0.main[1]
    assert git(lib, "rev-parse", "--is-shallow-repository") == "false"
    assert repo.shallow
    assert any("submodules with full history" in line for line in lines)


async def test_submodules_can_be_skipped(http_git: GitHttpServer, workdir: Path) -> None:
    repo = await clone(
        http_git.url("super.git"), workdir / "c", credentials=creds(http_git), submodules=False
    )
    assert list((repo.path / "lib").iterdir()) == []


async def test_accepts_a_parsed_url(http_git: GitHttpServer, workdir: Path) -> None:
    repo = await clone(parse_git_url(http_git.url("public.git")), workdir / "c")
    assert repo.branch == "main"


# ----------------------------------------------------------------- failures

Case = Callable[[GitHttpServer], tuple[str, dict[str, object]]]
FAILURES: dict[str, tuple[Case, type[AtelierError]]] = {
    "no-token-for-private": (lambda s: (s.url("private.git"), {}), GitAuthenticationFailed),
    "wrong-token": (
        lambda s: (s.url("private.git"), {"credentials": GitCredentials(token="wrong-" + s.token)}),
        GitAuthenticationFailed,
    ),
    "missing-repo": (lambda s: (s.url("nope.git"), {}), GitRepositoryNotFound),
    "missing-repo-with-token": (
        lambda s: (s.url("nope.git"), {"credentials": creds(s)}),
        GitRepositoryNotFound,
    ),
    "missing-branch": (lambda s: (s.url("public.git"), {"ref": "no-such-branch"}), GitRefNotFound),
    "submodule-without-token": (lambda s: (s.url("super.git"), {}), GitAuthenticationFailed),
    "closed-port": (
        lambda s: (f"http://127.0.0.1:{free_port()}/public.git", {}),
        GitUnreachable,
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
async def test_failures(http_git: GitHttpServer, workdir: Path, case: str) -> None:
    make, expected = FAILURES[case]
    url, kwargs = make(http_git)
    dest = workdir / "c"
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(AtelierError) as info:
        await clone(url, dest, on_output=lines.append, timeout=60, **kwargs)  # type: ignore[arg-type]
    assert type(info.value) is expected, info.value
    assert time.monotonic() - started < 30, "no hang waiting for a prompt"
    assert_no_clone(dest)
    for text in (str(info.value), repr(info.value.details), *lines):
        assert http_git.token not in text


async def test_token_in_failure_output_is_scrubbed(http_git: GitHttpServer, workdir: Path) -> None:
    secret = f"sekrit-{uuid.uuid4().hex}"
    # the secret is given as a URL user name: never shown, never stored
    url = http_git.url("private.git").replace("http://", f"http://{secret}@")
    dest = workdir / "c"
    lines: list[str] = []
    with pytest.raises(GitAuthenticationFailed) as info:
        await clone(url, dest, on_output=lines.append)
    assert secret not in str(info.value) + repr(info.value.details) + "".join(lines)
    assert_no_clone(dest)


async def test_timeout_kills_git(http_git: GitHttpServer, workdir: Path) -> None:
    dest = workdir / "c"
    url = http_git.url("slow.git")  # the server never answers
    started = time.monotonic()
    with pytest.raises(GitUnreachable) as info:
        await clone(url, dest, timeout=2)
    assert "timed out" in str(info.value)
    assert time.monotonic() - started < 15
    assert_no_clone(dest)
    deadline = time.monotonic() + 5
    while _processes_with(url) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _processes_with(url) == []


def _processes_with(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except OSError:
            continue
    return found
