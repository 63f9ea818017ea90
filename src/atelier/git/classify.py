"""Turn a failed git command into the Atelier error a caller can act on.

git says what went wrong only in English prose on stderr (we run it with
``LC_ALL=C``), so the rules below match the messages git 2.x, curl and
OpenSSH print. Order matters: the first rule that matches wins.

HTTPS hosts are ambiguous about private repositories. GitHub and GitLab ask
for credentials (401) for a repository that does not exist *or* that the
caller may not see; with credentials that cannot see it, GitHub answers 404.
So "asked for credentials / refused them" becomes
:class:`GitAuthenticationFailed` and "not found" becomes
:class:`GitRepositoryNotFound`, and both messages say that the other cause is
possible.
"""

from __future__ import annotations

import re

from atelier.errors import (
    AtelierError,
    GitAuthenticationFailed,
    GitRefNotFound,
    GitRepositoryNotFound,
    GitUnreachable,
    RuntimeFailure,
)
from atelier.git.url import GitUrl

__all__ = ["classify_failure"]

_AUTH = re.compile(
    r"Authentication failed for"
    r"|could not read (Username|Password) for"
    r"|terminal prompts disabled"
    r"|The requested URL returned error: (401|403)"
    r"|Permission denied \((publickey|password|keyboard-interactive)"
    r"|Permission denied, please try again"
    r"|Too many authentication failures"
    r"|HTTP Basic: Access denied"
    r"|Invalid username or (password|token)"
    r"|Write access to repository not granted",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(
    r"repository '[^']*' not found"
    r"|Repository not found"
    r"|The requested URL returned error: 404"
    r"|does not appear to be a git repository"
    r"|The project you were looking for could not be found",
    re.IGNORECASE,
)
_REF_NOT_FOUND = re.compile(
    r"couldn't find remote ref"
    r"|Remote branch .* not found"
    r"|invalid reference:"
    r"|not our ref"
    r"|unadvertised object",
    re.IGNORECASE,
)
_HOST_KEY = re.compile(
    r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED", re.IGNORECASE
)
_TLS = re.compile(r"SSL certificate problem|server certificate verification failed", re.I)
_UNREACHABLE = re.compile(
    r"Could not resolve host"
    r"|Could not resolve hostname"
    r"|Name or service not known"
    r"|Temporary failure in name resolution"
    r"|Failed to connect to"
    r"|Couldn't connect to server"
    r"|Connection refused"
    r"|Connection timed out"
    r"|Operation timed out"
    r"|timed out after"
    r"|Operation too slow"
    r"|No route to host"
    r"|Network is unreachable"
    r"|Connection reset"
    r"|Connection closed by"
    r"|kex_exchange_identification"
    r"|unable to connect to"
    r"|The requested URL returned error: 5\d\d"
    r"|RPC failed"
    r"|the remote end hung up unexpectedly",
    re.IGNORECASE,
)


def _last_lines(stderr: str, n: int = 6) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def classify_failure(stderr: str, url: GitUrl, *, action: str) -> AtelierError:
    """The error for a git command that failed with ``stderr`` (already scrubbed).

    ``action`` says what was being done ("cloning", "fetching submodules"...)
    and starts the message; the URL shown is always the redacted one.
    """
    where = url.redacted()
    detail = _last_lines(stderr)
    details = {"url": where, "git_output": detail} if detail else {"url": where}
    if _HOST_KEY.search(stderr):
        return GitUnreachable(
            f"{action} {where}: the SSH host key of {url.host} does not match the "
            "known_hosts given; refusing to connect",
            details=details,
        )
    if _AUTH.search(stderr):
        return GitAuthenticationFailed(
            f"{action} {where}: the git host refused the credentials or needs some "
            "(some hosts also answer this way for a repository that does not exist)",
            details=details,
        )
    if _NOT_FOUND.search(stderr):
        return GitRepositoryNotFound(
            f"{action} {where}: repository not found (or it is private and the "
            "credentials given cannot read it)",
            details=details,
        )
    if _REF_NOT_FOUND.search(stderr):
        return GitRefNotFound(f"{action} {where}: the ref was not found", details=details)
    if _TLS.search(stderr):
        return GitUnreachable(
            f"{action} {where}: the TLS certificate of {url.host} could not be verified",
            details=details,
        )
    if _UNREACHABLE.search(stderr):
        return GitUnreachable(
            f"{action} {where}: cannot reach the git host {url.host}", details=details
        )
    tail = f": {detail}" if detail else ""
    return RuntimeFailure(f"{action} {where} failed{tail}", details=details)
