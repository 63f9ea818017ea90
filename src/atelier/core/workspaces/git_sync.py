"""``git push`` / ``git pull`` of a repository in a sandbox, through the host.

The sandbox side is plain git run through the agent as the sandbox's default
user (``rev-parse``, ``bundle create``, ``fetch`` from a bundle, ``merge
--ff-only``); the host side (:mod:`atelier.git.sync`) talks to the remote
with the credentials of the call. The sandbox never sees a credential and
needs no network. The remote URL comes from the sandbox's own repository, so
it is untrusted input: it is parsed (and refused) like any clone URL.
"""

from __future__ import annotations

import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import GitCommandFailed, InvalidRequest
from ...git import GitCredentials, GitUrl, parse_git_url
from ...git.sync import check_branch, fetch_bundle, push_bundle
from ..agent_client import AgentClient

__all__ = ["SandboxRepo", "SyncResult", "pull", "push", "remote_url"]


@dataclass(frozen=True, slots=True)
class SyncResult:
    remote: str
    branch: str
    commit: str
    updated: bool


@dataclass(slots=True)
class SandboxRepo:
    """A repository at ``path`` in a sandbox, driven as ``user``."""

    agent: AgentClient
    path: str
    user: str | None

    async def git(self, *args: str, check: bool = True) -> str:
        result = await self.agent.run(
            argv=["git", "-C", self.path, *args], user=self.user, timeout=300
        )
        output = (result.stderr or result.stdout).decode(errors="replace").strip()
        if check and result.exit_code != 0:
            raise GitCommandFailed(
                f"git {args[0]} in {self.path} failed: "
                f"{output.splitlines()[-1] if output else result.exit_code}",
                details={"argv": list(args), "exit_code": result.exit_code, "output": output},
            )
        return result.stdout.decode(errors="replace").strip() if result.exit_code == 0 else ""

    async def branch(self, branch: str | None) -> str:
        if branch:
            return check_branch(branch)
        current = await self.git("rev-parse", "--abbrev-ref", "HEAD")
        if current == "HEAD":
            raise InvalidRequest(f"{self.path}: HEAD is detached; name the branch")
        return check_branch(current)

    async def commit_of(self, ref: str) -> str | None:
        return (
            await self.git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False) or None
        )

    @staticmethod
    def scratch() -> str:
        return f"/tmp/.atelier-bundle-{secrets.token_hex(6)}"

    async def remove(self, path: str) -> None:
        await self.agent.run(argv=["rm", "-f", path], user="root")


async def remote_url(repo: SandboxRepo, remote: str) -> GitUrl:
    """The URL of ``remote`` in the sandbox's repository (untrusted: parsed)."""
    if not remote or remote.startswith("-") or any(c.isspace() for c in remote):
        raise InvalidRequest(f"{remote!r} is not a remote name")
    return parse_git_url(await repo.git("remote", "get-url", remote))


async def push(
    repo: SandboxRepo, *, remote: str, branch: str | None, credentials: GitCredentials | None
) -> SyncResult:
    """Push ``branch`` (default: the current one) of the sandbox repository to ``remote``."""
    url = await remote_url(repo, remote)
    name = await repo.branch(branch)
    head = await repo.commit_of(f"refs/heads/{name}")
    if head is None:
        raise InvalidRequest(f"{repo.path}: no branch {name!r}")
    base = None
    for candidate in (f"refs/remotes/{remote}/{name}", f"refs/remotes/{remote}/HEAD"):
        known = await repo.commit_of(candidate)
        if known and (known == head or await _is_ancestor(repo, known, head)):
            base = known
            break
    if base == head:
        return SyncResult(remote, name, head, updated=False)
    bundle_in_sandbox = repo.scratch()
    revs = f"{base}..refs/heads/{name}" if base else f"refs/heads/{name}"
    try:
        await repo.git("bundle", "create", "-q", bundle_in_sandbox, revs)
        with tempfile.TemporaryDirectory(prefix="atelier-push-") as tmp:
            local = Path(tmp) / "push.bundle"
            _, chunks = await repo.agent.read_file(bundle_in_sandbox)
            with local.open("wb") as out:
                async for chunk in chunks:
                    out.write(chunk)
            pushed = await push_bundle(url, local, name, base=base, credentials=credentials)
    finally:
        await repo.remove(bundle_in_sandbox)
    await repo.git("update-ref", f"refs/remotes/{remote}/{name}", pushed)
    return SyncResult(remote, name, pushed, updated=True)


async def _is_ancestor(repo: SandboxRepo, older: str, newer: str) -> bool:
    result = await repo.agent.run(
        argv=["git", "-C", repo.path, "merge-base", "--is-ancestor", older, newer],
        user=repo.user,
        timeout=60,
    )
    return result.exit_code == 0


async def pull(
    repo: SandboxRepo, *, remote: str, branch: str | None, credentials: GitCredentials | None
) -> SyncResult:
    """Fetch ``branch`` of ``remote`` on the host and fast-forward the sandbox's branch."""
    url = await remote_url(repo, remote)
    name = await repo.branch(branch)
    tracking = f"refs/remotes/{remote}/{name}"
    base = await repo.commit_of(tracking)
    with tempfile.TemporaryDirectory(prefix="atelier-pull-") as tmp:
        local = Path(tmp) / "pull.bundle"
        tip = await fetch_bundle(url, name, local, base=base, credentials=credentials)
        if tip is not None:
            bundle_in_sandbox = repo.scratch()
            try:
                await repo.agent.write_file(bundle_in_sandbox, local.read_bytes(), user=repo.user)
                await repo.git("fetch", "-q", bundle_in_sandbox, f"refs/heads/{name}:{tracking}")
            finally:
                await repo.remove(bundle_in_sandbox)
    tip = tip or base
    assert tip is not None
    head = await repo.commit_of("HEAD")
    if head == tip:
        return SyncResult(remote, name, tip, updated=False)
    await repo.git("merge", "--ff-only", "-q", tracking)
    return SyncResult(remote, name, tip, updated=True)
