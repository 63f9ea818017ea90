"""Clone a repository from any git host onto the host's disk.

The clone is built in a hidden staging directory beside ``dest`` and renamed
into place only when everything (fetch, checkout, submodules) succeeded, so a
failure never leaves a half clone: ``dest`` stays absent (or the empty
directory it was). The steps, all under one deadline and one isolated
environment (``environment.py``)::

    git init; git remote add origin <plain URL>
    git ls-remote --symref origin          # reachability, auth, refs, default branch
    git fetch [--depth N] origin <what the ref resolved to>
    git checkout ...
    git submodule update --init --recursive [--depth N]

``ref`` is resolved against the advertised refs: branch, then tag, then a
full ref name, then a commit SHA (full or abbreviated). A SHA is fetched
directly (``git fetch --depth N origin <sha>``, which protocol v2 servers and
servers with ``uploadpack.allow*SHA1InWant`` allow); when the server refuses,
everything is fetched (full history) and the SHA looked up locally.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atelier.errors import (
    DirectoryNotEmpty,
    FileExists,
    GitRefNotFound,
    GitUnreachable,
    InvalidRequest,
)
from atelier.git.classify import classify_failure
from atelier.git.credentials import GitCredentials
from atelier.git.environment import GitEnvironment
from atelier.git.process import GitResult, GitRunner, GitTimeout, Scrubber
from atelier.git.url import GitUrl, parse_git_url

__all__ = ["ClonedRepo", "clone"]

_SHA_RE = re.compile(r"^[0-9a-fA-F]{4,40}$")
_FULL_SHA_RE = re.compile(r"^[0-9a-fA-F]{40}$")
# git's own answers when a server will not send an unadvertised commit
_SHA_REFUSED = re.compile(
    r"not our ref|unadvertised object|couldn't find remote ref|did not contain", re.IGNORECASE
)
_ALL_REFS = ("+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")


@dataclass(frozen=True, slots=True)
class ClonedRepo:
    """A finished clone.

    ``commit``: the full SHA checked out. ``ref``: the ref asked for (``None``
    for the default branch). ``branch``: the local branch checked out, or
    ``None`` for a detached HEAD (a tag or a commit). ``shallow``: whether the
    history was truncated.
    """

    path: Path
    commit: str
    ref: str | None
    branch: str | None
    shallow: bool


@dataclass(frozen=True, slots=True)
class _Target:
    """What ``ref`` resolved to on the remote."""

    kind: str  # "branch" | "tag" | "ref" | "sha"
    name: str  # branch/tag short name, full ref name, or the (maybe abbreviated) SHA
    sha: str | None = None  # the advertised commit, when known


@dataclass(frozen=True, slots=True)
class _Remote:
    refs: dict[str, str]
    head: str | None  # the ref HEAD points to, e.g. "refs/heads/main"


def _check_ref(ref: str | None) -> None:
    if ref is None:
        return
    bad = (
        not ref
        or ref != ref.strip()
        or ref.startswith("-")
        or any(c in ref for c in " ~^:?*[\\")
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in ref)
        or ".." in ref
        or "@{" in ref
    )
    if bad:
        raise InvalidRequest(f"invalid git ref {ref!r}: give a branch, a tag or a commit SHA")


def _check_dest(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise FileExists(f"clone destination {dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise DirectoryNotEmpty(f"clone destination {dest} is not empty")


def _parse_ls_remote(text: str) -> _Remote:
    refs: dict[str, str] = {}
    head: str | None = None
    for line in text.splitlines():
        left, _, name = line.partition("\t")
        if left.startswith("ref: ") and name == "HEAD":
            head = left[len("ref: ") :]
        elif name.endswith("^{}"):
            refs[name[: -len("^{}")]] = left  # a peeled tag: keep the commit
        elif name and left:
            refs.setdefault(name, left)
    return _Remote(refs, head)


def _resolve(ref: str | None, remote: _Remote) -> _Target:
    refs = remote.refs
    if ref is None or ref == "HEAD":
        if remote.head and remote.head.startswith("refs/heads/") and remote.head in refs:
            return _Target("branch", remote.head[len("refs/heads/") :], refs[remote.head])
        if "HEAD" in refs:
            return _Target("sha", refs["HEAD"], refs["HEAD"])
        raise GitRefNotFound("the repository has no commits yet (nothing to check out)")
    if f"refs/heads/{ref}" in refs:
        return _Target("branch", ref, refs[f"refs/heads/{ref}"])
    if f"refs/tags/{ref}" in refs:
        return _Target("tag", ref, refs[f"refs/tags/{ref}"])
    if ref.startswith("refs/") and ref in refs:
        if ref.startswith("refs/heads/"):
            return _Target("branch", ref[len("refs/heads/") :], refs[ref])
        if ref.startswith("refs/tags/"):
            return _Target("tag", ref[len("refs/tags/") :], refs[ref])
        return _Target("ref", ref, refs[ref])
    if _SHA_RE.match(ref):
        sha = ref.lower()
        if _FULL_SHA_RE.match(sha):
            return _Target("sha", sha, sha)
        tips = {v for v in refs.values() if v.startswith(sha)}
        if len(tips) == 1:
            full = tips.pop()
            return _Target("sha", full, full)
        return _Target("sha", sha)
    raise GitRefNotFound(f"no branch or tag named {ref!r} on the remote")


class _Cloner:
    """The steps of one clone into ``work`` (the staging directory)."""

    def __init__(
        self,
        runner: GitRunner,
        url: GitUrl,
        work: Path,
        *,
        ref: str | None,
        depth: int | None,
        submodules: bool,
        progress: bool,
    ) -> None:
        self.git = runner
        self.url = url
        self.work = work
        self.ref = ref
        self.depth = depth
        self.submodules = submodules
        self.progress = ["--progress"] if progress else []

    def _depth_args(self) -> list[str]:
        return ["--depth", str(self.depth)] if self.depth else []

    async def _must(self, *args: str, action: str = "cloning", echo: bool = True) -> GitResult:
        result = await self.git.run(*args, cwd=self.work, echo=echo)
        if not result.ok:
            raise classify_failure(result.stderr, self.url, action=action)
        return result

    async def run(self) -> ClonedRepo:
        await self._must("init", "-q", echo=False)
        await self._must("remote", "add", "origin", self.url.plain(), echo=False)
        listing = await self._must("ls-remote", "--symref", "origin")
        try:
            target = _resolve(self.ref, _parse_ls_remote(listing.stdout))
        except GitRefNotFound as exc:
            raise GitRefNotFound(
                f"cloning {self.url.redacted()}: {exc.message}",
                details={"url": self.url.redacted(), "ref": self.ref},
            ) from None
        branch = await self._fetch_and_checkout(target)
        if self.submodules and (self.work / ".gitmodules").exists():
            await self._submodules()
        head = await self._must("rev-parse", "HEAD", echo=False)
        shallow = await self._must("rev-parse", "--is-shallow-repository", echo=False)
        return ClonedRepo(
            path=self.work,
            commit=head.stdout.strip(),
            ref=self.ref,
            branch=branch,
            shallow=shallow.stdout.strip() == "true",
        )

    async def _fetch_and_checkout(self, target: _Target) -> str | None:
        fetch = ["fetch", *self.progress, "--no-tags", *self._depth_args(), "origin"]
        if target.kind == "branch":
            tracking = f"refs/remotes/origin/{target.name}"
            await self._must(*fetch, f"+refs/heads/{target.name}:{tracking}")
            if self.depth:  # like `git clone --depth`: follow just this branch
                spec = f"+refs/heads/{target.name}:{tracking}"
                await self._must("config", "remote.origin.fetch", spec, echo=False)
            await self._must("checkout", "-q", "-B", target.name, "--track", tracking)
            return target.name
        if target.kind in ("tag", "ref"):
            full = f"refs/tags/{target.name}" if target.kind == "tag" else target.name
            await self._must(*fetch, f"+{full}:{full}")
            await self._must("checkout", "-q", "--detach", f"{full}^{{commit}}")
            return None
        sha = await self._fetch_commit(target, fetch)
        await self._must("checkout", "-q", "--detach", sha)
        return None

    async def _fetch_commit(self, target: _Target, fetch: list[str]) -> str:
        """Fetch a commit by SHA; fall back to fetching everything if refused."""
        if target.sha is not None:
            result = await self.git.run(*fetch, target.sha, cwd=self.work)
            if result.ok:
                return target.sha
            if not _SHA_REFUSED.search(result.stderr):
                raise classify_failure(result.stderr, self.url, action="cloning")
            if self.git.on_output is not None:
                self.git.on_output("server refused a fetch by commit id; fetching all history")
        await self._must("fetch", *self.progress, "origin", *_ALL_REFS)
        found = await self.git.run(
            "rev-parse", "--verify", "--quiet", f"{target.name}^{{commit}}", cwd=self.work
        )
        if not found.ok:
            raise GitRefNotFound(
                f"cloning {self.url.redacted()}: no commit {target.name!r} in the repository",
                details={"url": self.url.redacted(), "ref": self.ref},
            )
        return found.stdout.strip()

    async def _submodules(self) -> None:
        update = ["submodule", "update", "--init", "--recursive", *self.progress]
        action = "fetching submodules of"
        if self.depth:
            result = await self.git.run(*update, *self._depth_args(), cwd=self.work)
            if result.ok:
                return
            if not _SHA_REFUSED.search(result.stderr):
                raise classify_failure(result.stderr, self.url, action=action)
            # A submodule commit the server will not send shallowly: start the
            # submodules over with full history.
            if self.git.on_output is not None:
                self.git.on_output("fetching submodules with full history instead")
            await self._must("submodule", "deinit", "--all", "--force", action=action)
            shutil.rmtree(self.work / ".git" / "modules", ignore_errors=True)
        await self._must(*update, action=action)


def _secrets(url: GitUrl, credentials: GitCredentials | None) -> list[str]:
    found = credentials.secrets() if credentials else []
    # An http(s) URL user may be a token; a short one ("git") is not, and
    # scrubbing it would mangle every line of output.
    if url.user and url.scheme in ("http", "https") and len(url.user) >= 8:
        found.append(url.user)
    return found


def _move_into_place(work: Path, dest: Path) -> None:
    os.chmod(work, 0o755)
    try:
        os.rename(work, dest)  # replaces an empty directory atomically
    except OSError as exc:
        raise DirectoryNotEmpty(f"clone destination {dest} is not empty") from exc


async def clone(
    url: GitUrl | str,
    dest: Path,
    *,
    ref: str | None = None,
    depth: int | None = 1,
    submodules: bool = True,
    credentials: GitCredentials | None = None,
    timeout: float = 600,
    on_output: Callable[[str], None] | None = None,
) -> ClonedRepo:
    """Clone ``url`` into ``dest`` (which must not exist, or be an empty directory).

    ``ref``: a branch, a tag or a full/abbreviated commit SHA (default: the
    remote's default branch). ``depth``: history depth (``None`` = full
    history). ``submodules``: check out submodules recursively (shallow when
    ``depth`` is set), with the same credentials for the same host.
    ``on_output``: receives git's progress lines, with secrets removed.

    Raises ``InvalidRequest`` (bad URL, ref or depth),
    ``GitAuthenticationFailed``, ``GitRepositoryNotFound``, ``GitRefNotFound``,
    ``GitUnreachable`` (including the timeout), ``FileExists`` /
    ``DirectoryNotEmpty`` (``dest``) or ``RuntimeFailure``.
    """
    git_url = url if isinstance(url, GitUrl) else parse_git_url(url)
    _check_ref(ref)
    if depth is not None and (isinstance(depth, bool) or depth < 1):
        raise InvalidRequest("depth must be a positive number of commits, or None")
    if timeout <= 0:
        raise InvalidRequest("timeout must be positive")
    dest = Path(dest).absolute()
    _check_dest(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.clone-", dir=dest.parent))
    loop = asyncio.get_running_loop()
    try:
        with GitEnvironment(git_url, credentials) as env:
            runner = GitRunner(
                env.vars,
                deadline=loop.time() + timeout,
                scrub=Scrubber(_secrets(git_url, credentials)),
                on_output=on_output,
            )
            cloner = _Cloner(
                runner,
                git_url,
                work,
                ref=ref,
                depth=depth,
                submodules=submodules,
                progress=on_output is not None,
            )
            repo = await cloner.run()
        _check_dest(dest)
        _move_into_place(work, dest)
    except GitTimeout:
        raise GitUnreachable(
            f"cloning {git_url.redacted()}: timed out after {timeout:g} s",
            details={"url": git_url.redacted()},
        ) from None
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return ClonedRepo(
        path=dest, commit=repo.commit, ref=repo.ref, branch=repo.branch, shallow=repo.shallow
    )
