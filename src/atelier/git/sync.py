"""Push and pull for a repository that lives in a sandbox, done on the host.

A sandbox may have no network at all, and even when it has one, the git
host's credentials should not enter it (the code running there is not
trusted). So the server moves commits with *bundles*:

* push: the sandbox writes ``git bundle create <base>..<branch>`` (only the
  commits the remote lacks; ``base`` is the sandbox's last known state of the
  remote branch); the host fetches ``base`` from the remote, unbundles on top
  of it and pushes, with the credentials of this one call;
* pull: the host fetches the remote branch and bundles what the sandbox lacks
  (``<tip> ^<base>``, or the whole branch when ``base`` is unknown to the
  remote); the sandbox fetches from the bundle and fast-forwards.

The host side runs in the same throwaway, locked-down environment as a clone
(:mod:`.environment`): no system config, no prompts, network transports only,
secrets scrubbed from every message.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from atelier.errors import Conflict, InvalidRequest
from atelier.git.classify import classify_failure
from atelier.git.credentials import GitCredentials
from atelier.git.environment import GitEnvironment
from atelier.git.process import GitResult, GitRunner, GitTimeout, Scrubber
from atelier.git.url import GitUrl, parse_git_url

__all__ = ["fetch_bundle", "push_bundle"]

_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/-]{1,200}(?<!\.lock)(?<!/)$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_REJECTED = re.compile(r"\[rejected\]|non-fast-forward|fetch first|\[remote rejected\]")


def check_branch(branch: str) -> str:
    if not _BRANCH.match(branch):
        raise InvalidRequest(f"{branch!r} is not a branch name", details={"branch": branch})
    return branch


class _HostRepo:
    """A bare scratch repository on the host with one remote, removed on exit."""

    def __init__(
        self,
        url: GitUrl,
        credentials: GitCredentials | None,
        timeout: float,
        on_output: Callable[[str], None] | None,
    ) -> None:
        self.url = url
        self.credentials = credentials
        self.timeout = timeout
        self.on_output = on_output
        self.dir = Path(tempfile.mkdtemp(prefix="atelier-sync-"))
        self._env = GitEnvironment(url, credentials)
        self._runner: GitRunner | None = None

    async def __aenter__(self) -> _HostRepo:
        env = self._env.__enter__()
        secrets = self.credentials.secrets() if self.credentials else []
        self._runner = GitRunner(
            env.vars,
            deadline=asyncio.get_running_loop().time() + self.timeout,
            scrub=Scrubber(secrets),
            on_output=self.on_output,
        )
        await self.must("init", "-q", "--bare", action="preparing")
        await self.must("remote", "add", "origin", self.url.plain(), action="preparing")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._env.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def run(self, *args: str) -> GitResult:
        assert self._runner is not None
        try:
            return await self._runner.run(*args, cwd=self.dir, echo=False)
        except GitTimeout:
            raise classify_failure("fatal: timed out", self.url, action="talking to") from None

    async def must(self, *args: str, action: str) -> GitResult:
        result = await self.run(*args)
        if not result.ok:
            if _REJECTED.search(result.stderr):
                raise Conflict(
                    f"{action} {self.url.redacted()}: the remote branch has commits the "
                    "sandbox does not have; pull first",
                    details={"url": self.url.redacted(), "git_output": result.stderr[-2000:]},
                )
            raise classify_failure(result.stderr, self.url, action=action)
        return result

    async def fetch_base(self, branch: str, base: str | None) -> None:
        """Make ``base`` (a commit the remote has) present, fetching as little as possible."""
        if base is None:
            return
        if (await self.run("fetch", "-q", "--depth=1", "origin", base)).ok:
            return
        await self.must("fetch", "-q", "origin", f"refs/heads/{branch}", action="fetching")


async def push_bundle(
    url: GitUrl | str,
    bundle: Path,
    branch: str,
    *,
    base: str | None,
    credentials: GitCredentials | None = None,
    timeout: float = 600,
    on_output: Callable[[str], None] | None = None,
) -> str:
    """Push ``branch`` from ``bundle`` (made ``base..branch``) to ``url``; the pushed commit.

    Raises Conflict when the remote branch moved on (pull first), and the
    clone errors (auth, not found, unreachable) otherwise.
    """
    git_url = url if isinstance(url, GitUrl) else parse_git_url(url)
    check_branch(branch)
    if base is not None and not _SHA.match(base):
        raise InvalidRequest(f"{base!r} is not a commit id")
    async with _HostRepo(git_url, credentials, timeout, on_output) as repo:
        await repo.fetch_base(branch, base)
        # unbundle, not fetch: the locked-down environment allows no file transport
        listing = await repo.must("bundle", "unbundle", str(bundle), action="unbundling for")
        tips: dict[str, str] = {}
        for line in listing.stdout.splitlines():
            sha, _, ref = line.partition(" ")
            tips[ref] = sha
        tip = tips.get(f"refs/heads/{branch}", "")
        if not _SHA.match(tip):
            raise InvalidRequest(f"the sandbox's bundle does not hold branch {branch!r}")
        await repo.must("update-ref", f"refs/heads/{branch}", tip, action="pushing to")
        await repo.must(
            "push", "-q", "origin", f"refs/heads/{branch}:refs/heads/{branch}", action="pushing to"
        )
        return tip


async def fetch_bundle(
    url: GitUrl | str,
    branch: str,
    bundle: Path,
    *,
    base: str | None,
    credentials: GitCredentials | None = None,
    timeout: float = 600,
    on_output: Callable[[str], None] | None = None,
) -> str | None:
    """Write to ``bundle`` the commits of the remote ``branch`` after ``base``;
    returns the remote tip, or None (no bundle written) when it is ``base``."""
    git_url = url if isinstance(url, GitUrl) else parse_git_url(url)
    check_branch(branch)
    if base is not None and not _SHA.match(base):
        raise InvalidRequest(f"{base!r} is not a commit id")
    async with _HostRepo(git_url, credentials, timeout, on_output) as repo:
        await repo.must(
            "fetch", "-q", "origin", f"refs/heads/{branch}:refs/heads/{branch}", action="fetching"
        )
        tip = (await repo.must("rev-parse", f"refs/heads/{branch}", action="fetching")).stdout
        tip = tip.strip()
        if tip == base:
            return None
        known = base is not None and (await repo.run("cat-file", "-e", f"{base}^{{commit}}")).ok
        revs = [f"refs/heads/{branch}", f"^{base}"] if known and base else [f"refs/heads/{branch}"]
        await repo.must("bundle", "create", str(bundle), *revs, action="bundling")
        return tip
