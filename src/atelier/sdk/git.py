"""``sandbox.git``: git in a sandbox's working tree.

``clone``, ``push`` and ``pull`` are done by the server: it talks to the git
host with the credentials given for that call (which never enter the
sandbox) and moves commits in and out of the sandbox as git bundles, so they
work even for a sandbox without network. The other verbs run ``git`` inside
the sandbox, in the workspace's folder unless a ``path`` is given, as the
sandbox's default user.

A failing git command raises :class:`~atelier.errors.GitCommandFailed`, with
its exit code and output in ``details``; a remote that cannot be reached
raises :class:`~atelier.errors.GitUnreachable`, refused credentials
:class:`~atelier.errors.GitAuthenticationFailed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from atelier.errors import (
    GitAuthenticationFailed,
    GitCommandFailed,
    GitUnreachable,
    InvalidRequest,
)
from atelier.sdk import _api as api
from atelier.sdk._base import Call
from atelier.sdk._http import AsyncHttp, SyncHttp
from atelier.sdk.commands import AsyncCommands, Commands
from atelier.sdk.models import CommandResult, GitAuth, SandboxInfo

__all__ = ["AsyncGit", "Git", "GitFileStatus", "GitStatus", "GitSyncResult"]

_UNREACHABLE = ("could not resolve host", "could not read from remote", "unable to access")
_AUTH = ("authentication failed", "permission denied (publickey", "could not read username")


@dataclass(frozen=True)
class GitFileStatus:
    path: str
    index: str  # the porcelain X column: "M", "A", "D", "R", "?" ...
    worktree: str  # the Y column

    @property
    def untracked(self) -> bool:
        return self.index == "?"


@dataclass(frozen=True)
class GitSyncResult:
    remote: str
    branch: str
    commit: str  # the branch's commit after the push or pull
    updated: bool  # whether anything changed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GitSyncResult:
        return cls(
            remote=str(data["remote"]),
            branch=str(data["branch"]),
            commit=str(data["commit"]),
            updated=bool(data["updated"]),
        )


@dataclass(frozen=True)
class GitStatus:
    branch: str | None  # None when detached
    upstream: str | None = None
    ahead: int = 0
    behind: int = 0
    files: list[GitFileStatus] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.files


def parse_status(text: str) -> GitStatus:
    """Parse ``git status --porcelain=v1 --branch`` output."""
    branch: str | None = None
    upstream: str | None = None
    ahead = behind = 0
    files: list[GitFileStatus] = []
    for line in text.splitlines():
        if line.startswith("## "):
            head = line[3:]
            info = ""
            if " [" in head:
                head, _, info = head.partition(" [")
                info = info.rstrip("]")
            local, _, upstream_name = head.partition("...")
            if local.startswith("HEAD (no branch)"):
                branch = None
            else:
                branch = local.removeprefix("No commits yet on ")
            upstream = upstream_name or None
            for part in info.split(", "):
                word, _, number = part.partition(" ")
                if word == "ahead" and number.isdigit():
                    ahead = int(number)
                elif word == "behind" and number.isdigit():
                    behind = int(number)
        elif len(line) > 3:
            path = line[3:]
            if " -> " in path:  # a rename: the new name
                path = path.split(" -> ", 1)[1]
            files.append(GitFileStatus(path=path, index=line[0], worktree=line[1]))
    return GitStatus(branch=branch, upstream=upstream, ahead=ahead, behind=behind, files=files)


def _check(argv: Sequence[str], result: CommandResult) -> str:
    if result.exit_code == 0:
        return result.stdout
    output = (result.stderr or result.stdout).strip()
    lowered = output.lower()
    details: dict[str, Any] = {"argv": list(argv), "exit_code": result.exit_code, "output": output}
    summary = output.splitlines()[-1] if output else f"exit code {result.exit_code}"
    if any(marker in lowered for marker in _AUTH):
        raise GitAuthenticationFailed(f"git {argv[0]}: {summary}", details=details)
    if any(marker in lowered for marker in _UNREACHABLE):
        raise GitUnreachable(f"git {argv[0]}: {summary}", details=details)
    raise GitCommandFailed(f"git {argv[0]} failed: {summary}", details=details)


class _GitBase:
    def __init__(self, info: SandboxInfo) -> None:
        self._sandbox_id = info.id
        self._folder = info.workspace.folder if info.workspace else None

    def _cwd(self, path: str | None) -> str:
        cwd = path or self._folder
        if not cwd:
            raise InvalidRequest("this sandbox is not a workspace: pass path= (the repository)")
        return cwd

    @staticmethod
    def _commit_argv(
        message: str, author_name: str | None, author_email: str | None, allow_empty: bool
    ) -> list[str]:
        argv = ["commit", "-m", message]
        if author_name or author_email:
            argv += ["--author", f"{author_name or 'Atelier'} <{author_email or ''}>"]
        if allow_empty:
            argv.append("--allow-empty")
        return argv

    @staticmethod
    def _identity_env(author_name: str | None, author_email: str | None) -> dict[str, str]:
        env = {}
        if author_name:
            env["GIT_COMMITTER_NAME"] = author_name
        if author_email:
            env["GIT_COMMITTER_EMAIL"] = author_email
        return env

    @staticmethod
    def _branches(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip()]

    def _sync_call(
        self,
        direction: str,
        path: str | None,
        remote: str,
        branch: str | None,
        auth: GitAuth | None,
        secret: str | None,
    ) -> Call[dict[str, Any]]:
        return api.git_sync(
            self._sandbox_id, direction, path=path, remote=remote, branch=branch,
            credentials=auth, secret=secret,
        )  # fmt: skip

    def _clone_call(
        self,
        repo: str,
        path: str | None,
        ref: str | None,
        depth: int | None,
        auth: GitAuth | None,
        secret: str | None,
    ) -> Call[dict[str, Any]]:
        return api.git_clone(
            self._sandbox_id, repo=repo, path=path, ref=ref, depth=depth, credentials=auth,
            secret=secret,
        )  # fmt: skip


class Git(_GitBase):
    def __init__(self, http: SyncHttp, commands: Commands, info: SandboxInfo) -> None:
        super().__init__(info)
        self._http = http
        self._commands = commands

    def _git(self, argv: Sequence[str], path: str | None, env: dict[str, str] | None = None) -> str:
        result = self._commands.run(argv=["git", *argv], cwd=self._cwd(path), env=env)
        return _check(argv, result)

    def clone(
        self,
        repo: str,
        path: str | None = None,
        *,
        ref: str | None = None,
        depth: int | None = 1,
        auth: GitAuth | None = None,
        secret: str | None = None,
    ) -> dict[str, Any]:
        """Clone ``repo`` into ``path`` (default: the workspace folder, or
        ``/workspaces/<name>``); returns ``{"path", "commit", "branch"}``."""
        return self._http.call(self._clone_call(repo, path, ref, depth, auth, secret))

    def status(self, path: str | None = None) -> GitStatus:
        return parse_status(self._git(["status", "--porcelain=v1", "--branch"], path))

    def add(self, paths: Sequence[str] = (".",), path: str | None = None) -> None:
        self._git(["add", "--", *paths], path)

    def commit(
        self,
        message: str,
        *,
        author_name: str | None = None,
        author_email: str | None = None,
        allow_empty: bool = False,
        path: str | None = None,
    ) -> str:
        """Commit what is staged; returns the new commit's id."""
        argv = self._commit_argv(message, author_name, author_email, allow_empty)
        self._git(argv, path, self._identity_env(author_name, author_email))
        return self._git(["rev-parse", "HEAD"], path).strip()

    def branches(self, path: str | None = None) -> list[str]:
        return self._branches(self._git(["branch", "--format=%(refname:short)"], path))

    def checkout(self, branch: str, *, create: bool = False, path: str | None = None) -> None:
        self._git(["checkout", *(["-b"] if create else []), branch], path)

    def pull(
        self,
        remote: str = "origin",
        branch: str | None = None,
        *,
        auth: GitAuth | None = None,
        secret: str | None = None,
        path: str | None = None,
    ) -> GitSyncResult:
        """Fetch ``branch`` (default: the current one) and fast-forward to it."""
        call = self._sync_call("pull", path, remote, branch, auth, secret)
        return GitSyncResult.from_json(self._http.call(call))

    def push(
        self,
        remote: str = "origin",
        branch: str | None = None,
        *,
        auth: GitAuth | None = None,
        secret: str | None = None,
        path: str | None = None,
    ) -> GitSyncResult:
        """Push ``branch`` (default: the current one); Conflict if the remote moved on."""
        call = self._sync_call("push", path, remote, branch, auth, secret)
        return GitSyncResult.from_json(self._http.call(call))


class AsyncGit(_GitBase):
    def __init__(self, http: AsyncHttp, commands: AsyncCommands, info: SandboxInfo) -> None:
        super().__init__(info)
        self._http = http
        self._commands = commands

    async def _git(
        self, argv: Sequence[str], path: str | None, env: dict[str, str] | None = None
    ) -> str:
        result = await self._commands.run(argv=["git", *argv], cwd=self._cwd(path), env=env)
        return _check(argv, result)

    async def clone(
        self,
        repo: str,
        path: str | None = None,
        *,
        ref: str | None = None,
        depth: int | None = 1,
        auth: GitAuth | None = None,
        secret: str | None = None,
    ) -> dict[str, Any]:
        return await self._http.call(self._clone_call(repo, path, ref, depth, auth, secret))

    async def status(self, path: str | None = None) -> GitStatus:
        return parse_status(await self._git(["status", "--porcelain=v1", "--branch"], path))

    async def add(self, paths: Sequence[str] = (".",), path: str | None = None) -> None:
        await self._git(["add", "--", *paths], path)

    async def commit(
        self,
        message: str,
        *,
        author_name: str | None = None,
        author_email: str | None = None,
        allow_empty: bool = False,
        path: str | None = None,
    ) -> str:
        argv = self._commit_argv(message, author_name, author_email, allow_empty)
        await self._git(argv, path, self._identity_env(author_name, author_email))
        return (await self._git(["rev-parse", "HEAD"], path)).strip()

    async def branches(self, path: str | None = None) -> list[str]:
        return self._branches(await self._git(["branch", "--format=%(refname:short)"], path))

    async def checkout(self, branch: str, *, create: bool = False, path: str | None = None) -> None:
        await self._git(["checkout", *(["-b"] if create else []), branch], path)

    async def pull(
        self,
        remote: str = "origin",
        branch: str | None = None,
        *,
        auth: GitAuth | None = None,
        secret: str | None = None,
        path: str | None = None,
    ) -> GitSyncResult:
        call = self._sync_call("pull", path, remote, branch, auth, secret)
        return GitSyncResult.from_json(await self._http.call(call))

    async def push(
        self,
        remote: str = "origin",
        branch: str | None = None,
        *,
        auth: GitAuth | None = None,
        secret: str | None = None,
        path: str | None = None,
    ) -> GitSyncResult:
        call = self._sync_call("push", path, remote, branch, auth, secret)
        return GitSyncResult.from_json(await self._http.call(call))
