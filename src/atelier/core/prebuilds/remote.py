"""Where does a remote branch point? ``git ls-remote`` on the host, in the git
layer's locked-down environment (credentials for this call only, no prompts,
network transports only, secrets scrubbed from messages)."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path

from ...errors import GitRefNotFound, GitUnreachable
from ...git import GitCredentials, GitUrl
from ...git.classify import classify_failure
from ...git.environment import GitEnvironment
from ...git.process import GitRunner, GitTimeout, Scrubber
from ...git.sync import check_branch

__all__ = ["branch_head"]

_SHA = re.compile(r"^[0-9a-f]{40}$")


async def branch_head(
    url: GitUrl, branch: str, credentials: GitCredentials | None, *, timeout: float = 60
) -> str:
    """The commit ``refs/heads/<branch>`` of ``url`` points at.

    Raises the clone errors (``git_auth_failed``, ``git_repo_not_found``,
    ``git_unreachable``) and GitRefNotFound when the branch does not exist.
    """
    check_branch(branch)
    secrets = credentials.secrets() if credentials else []
    with (
        tempfile.TemporaryDirectory(prefix="atelier-ls-remote-") as tmp,
        GitEnvironment(url, credentials) as env,
    ):
        runner = GitRunner(
            env.vars,
            deadline=asyncio.get_running_loop().time() + timeout,
            scrub=Scrubber(secrets),
        )
        try:
            result = await runner.run(
                "ls-remote", "--heads", url.plain(), f"refs/heads/{branch}", cwd=Path(tmp)
            )
        except GitTimeout:
            raise GitUnreachable(
                f"asking {url.redacted()} for {branch}: timed out after {timeout:g} s",
                details={"url": url.redacted()},
            ) from None
    if not result.ok:
        raise classify_failure(result.stderr, url, action="asking")
    for line in result.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name == f"refs/heads/{branch}" and _SHA.match(sha):
            return sha
    raise GitRefNotFound(
        f"{url.redacted()} has no branch {branch!r}",
        details={"url": url.redacted(), "ref": branch},
    )
