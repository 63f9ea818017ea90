"""A private, throwaway environment for running git against an untrusted remote.

Every git run gets:

* a private temporary directory (0700) as ``HOME``, holding the only git
  config git reads (``GIT_CONFIG_NOSYSTEM=1``, ``GIT_CONFIG_GLOBAL``), the SSH
  client config, ``known_hosts`` and -- only while the clone runs -- the SSH
  private key (0600). It is removed when the environment closes;
* no terminal prompts (``GIT_TERMINAL_PROMPT=0``, SSH ``BatchMode``), so
  missing credentials fail at once instead of hanging;
* only network transports (``GIT_ALLOW_PROTOCOL=https:http:ssh:git``,
  ``protocol.file.allow=never``): a hostile ``.gitmodules`` cannot read
  local repositories or run ``ext::`` commands;
* an HTTPS credential helper scoped to the remote's ``scheme://host[:port]``
  that prints the user name and token from environment variables of the git
  process. The secret is never in argv (world-readable in ``/proc``), never
  in a file, never in the clone's ``.git/config``; submodules on the same
  host get the same credentials, other hosts get none;
* for SSH, ``GIT_SSH_COMMAND='ssh -F <private ssh_config>'`` where the key
  is offered only to the remote's host (``IdentitiesOnly``), the host agent
  and the user's own keys and configs are not used, and host keys are checked
  against the given ``known_hosts`` (or accepted on first use into a
  throwaway file when none are given).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from atelier.git.credentials import GitCredentials
from atelier.git.url import GitUrl

__all__ = ["ALLOWED_PROTOCOLS", "TOKEN_ENV", "USERNAME_ENV", "GitEnvironment"]

ALLOWED_PROTOCOLS = "https:http:ssh:git"
USERNAME_ENV = "ATELIER_GIT_USERNAME"
TOKEN_ENV = "ATELIER_GIT_TOKEN"
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Passed through from the server's environment: how to reach the network and
# which CAs to trust. Nothing else leaks in (no GIT_*, no SSH_AUTH_SOCK).
_PASSTHROUGH = (
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
)
# The helper answers "get" only; git calls it with "store"/"erase" too.
_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    f"printf 'username=%s\\n' \"${USERNAME_ENV}\"; "
    f'test -n "${TOKEN_ENV}" && printf \'password=%s\\n\' "${TOKEN_ENV}"; '
    "exit 0; }; f"
)


def _config_value(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


class GitEnvironment:
    """The isolated environment of one clone: ``with GitEnvironment(...) as env``.

    ``env.vars`` is the complete process environment for every git command
    of the clone; the temporary directory is removed on exit.
    """

    def __init__(self, url: GitUrl, credentials: GitCredentials | None) -> None:
        self.url = url
        self.credentials = credentials or GitCredentials()
        self.home: Path | None = None
        self.vars: dict[str, str] = {}

    def __enter__(self) -> GitEnvironment:
        self.home = Path(tempfile.mkdtemp(prefix="atelier-git-"))
        try:
            os.chmod(self.home, 0o700)
            self.vars = self._build(self.home)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary directory (key, config, known_hosts)."""
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def _build(self, home: Path) -> dict[str, str]:
        creds = self.credentials
        config = home / "gitconfig"
        _write_private(config, self._gitconfig())
        env = {
            "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "LC_ALL": "C",
            "LANG": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": str(config),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
            "GIT_SSH_VARIANT": "ssh",
            "GIT_SSH_COMMAND": f"ssh -F {shlex.quote(str(self._ssh_config(home)))}",
        }
        env.update({k: os.environ[k] for k in _PASSTHROUGH if k in os.environ})
        if self._https_credentials():
            env[USERNAME_ENV] = creds.username or self.url.user or creds.https_username
            env[TOKEN_ENV] = creds.token or ""
        return env

    def _https_credentials(self) -> bool:
        if self.url.scheme not in ("http", "https"):
            return False
        return bool(self.credentials.token or self.credentials.username or self.url.user)

    def _gitconfig(self) -> str:
        lines = [
            "[protocol]",
            "\tallow = never",
            '[protocol "https"]',
            "\tallow = always",
            '[protocol "http"]',
            "\tallow = always",
            '[protocol "ssh"]',
            "\tallow = always",
            '[protocol "git"]',
            "\tallow = always",
            '[protocol "file"]',
            "\tallow = never",
            "[init]",
            "\tdefaultBranch = main",
            "[advice]",
            "\tdetachedHead = false",
            "[http]",
            # abort a transfer stalled below 1 KB/s for a minute
            "\tlowSpeedLimit = 1000",
            "\tlowSpeedTime = 60",
            "[credential]",
            "\thelper =",
        ]
        if self._https_credentials():
            lines += [
                f"[credential {_config_value(self.url.credential_scope())}]",
                f"\thelper = {_config_value(_HELPER)}",
            ]
        return "\n".join(lines) + "\n"

    def _ssh_config(self, home: Path) -> Path:
        creds = self.credentials
        known_hosts = home / "known_hosts"
        _write_private(known_hosts, (creds.ssh_known_hosts or "").rstrip("\n") + "\n")
        lines: list[str] = []
        if creds.ssh_private_key and self.url.scheme == "ssh":
            key = home / "id_key"
            _write_private(key, creds.ssh_private_key.strip() + "\n")
            lines += [f"Host {self.url.host}", f'  IdentityFile "{key}"', ""]
        strict = "yes" if creds.ssh_known_hosts is not None else "accept-new"
        lines += [
            "Host *",
            # without a key for this host: a file that does not exist, so the
            # server user's default keys (~/.ssh/id_*) are never offered
            f'  IdentityFile "{home / "no-key"}"',
            "  IdentitiesOnly yes",
            "  IdentityAgent none",
            "  BatchMode yes",
            "  PasswordAuthentication no",
            "  KbdInteractiveAuthentication no",
            f'  UserKnownHostsFile "{known_hosts}"',
            "  GlobalKnownHostsFile /dev/null",
            f"  StrictHostKeyChecking {strict}",
            "  ConnectTimeout 30",
            "  ServerAliveInterval 15",
            "  ServerAliveCountMax 4",
            "  LogLevel ERROR",
        ]
        path = home / "ssh_config"
        _write_private(path, "\n".join(lines) + "\n")
        return path
