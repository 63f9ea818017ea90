"""Clone any repository from any git host, on the host side, with the git CLI.

Network URLs only (https, http, ssh, scp-like, git); credentials are passed
separately and never reach argv, files left on disk, the clone's
``.git/config``, output or error messages. Failures map to
``GitAuthenticationFailed``, ``GitRepositoryNotFound``, ``GitRefNotFound``,
``GitUnreachable``, ``InvalidRequest`` or ``RuntimeFailure``.
See ``docs/git.md``.
"""

from atelier.git.clone import ClonedRepo, clone
from atelier.git.credentials import DEFAULT_HTTPS_USERNAME, GitCredentials
from atelier.git.url import GitUrl, parse_git_url

__all__ = [
    "DEFAULT_HTTPS_USERNAME",
    "ClonedRepo",
    "GitCredentials",
    "GitUrl",
    "clone",
    "parse_git_url",
]
