"""Credentials for a git host, kept out of every printable form.

HTTPS credentials are a user name and a token (or password); SSH credentials
are a private key and, ideally, the host's ``known_hosts`` lines. None of the
secret fields ever appears in ``repr``/``str``; how they reach git without
showing up in argv, files or ``.git/config`` is in ``environment.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from atelier.errors import InvalidRequest

__all__ = ["DEFAULT_HTTPS_USERNAME", "GitCredentials"]

#: The HTTPS user name sent with a token when none is given. GitHub accepts
#: any user name with a token (``x-access-token`` is what its app tokens use),
#: and so does GitLab for personal/project tokens; Bitbucket needs the real
#: user name (or ``x-token-auth`` for its access tokens), so pass it there.
DEFAULT_HTTPS_USERNAME = "x-access-token"


def _check_line(name: str, value: str | None) -> None:
    if value is not None and (not value or any(c in value for c in "\r\n\x00")):
        raise InvalidRequest(f"git credentials: {name} must be a non-empty single line")


@dataclass(frozen=True, slots=True)
class GitCredentials:
    """What to authenticate to a git host with.

    ``username``/``token``: HTTPS Basic credentials (``username`` defaults to
    :data:`DEFAULT_HTTPS_USERNAME` when only a token is given).
    ``ssh_private_key``: the PEM/OpenSSH text of an unencrypted private key.
    ``ssh_known_hosts``: ``known_hosts`` lines pinning the SSH host key; when
    ``None`` the first key seen is accepted (``StrictHostKeyChecking=accept-new``
    into a throwaway file) -- convenient, but it does not protect against an
    attacker in the middle of that connection. Pin the key where it matters.
    """

    username: str | None = None
    token: str | None = None
    ssh_private_key: str | None = None
    ssh_known_hosts: str | None = None

    def __post_init__(self) -> None:
        _check_line("username", self.username)
        _check_line("token", self.token)
        if self.ssh_private_key is not None and not self.ssh_private_key.strip():
            raise InvalidRequest("git credentials: ssh_private_key is empty")

    @property
    def https_username(self) -> str:
        """The user name sent over HTTPS."""
        return self.username or DEFAULT_HTTPS_USERNAME

    def secrets(self) -> list[str]:
        """Every secret value, for scrubbing output (longest first)."""
        found = [s for s in (self.token, self.ssh_private_key) if s]
        return sorted(found, key=len, reverse=True)

    def __repr__(self) -> str:
        def shown(value: str | None) -> str:
            return "None" if value is None else "'***'"

        return (
            f"GitCredentials(username={self.username!r}, token={shown(self.token)}, "
            f"ssh_private_key={shown(self.ssh_private_key)}, "
            f"ssh_known_hosts={'None' if self.ssh_known_hosts is None else '<given>'})"
        )

    __str__ = __repr__
