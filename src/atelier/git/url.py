"""Parse and check a git remote URL before anything is run with it.

Only network transports are accepted: ``https``, ``http``, ``ssh`` (the
``ssh://`` form and the scp-like ``user@host:path`` form) and ``git``. Local
paths, ``file://``, the ``transport::address`` remote-helper syntax
(``ext::``, ``fd::``), option-looking input and control characters are refused
with :class:`~atelier.errors.InvalidRequest`. So is a password embedded in an
http(s) URL: credentials travel separately (:class:`~atelier.git.GitCredentials`),
and the message never repeats the secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from atelier.errors import InvalidRequest

__all__ = ["GitUrl", "parse_git_url"]

#: URL schemes git itself understands for these transports, mapped to ours.
_SCHEMES = {
    "https": "https",
    "http": "http",
    "ssh": "ssh",
    "git+ssh": "ssh",
    "ssh+git": "ssh",
    "git": "git",
}
_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
_URL_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)
# A host name or IPv4 address: letters, digits, dots, dashes, underscores.
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$")
_IPV6_RE = re.compile(r"^[0-9A-Fa-f:.]+(?:%[A-Za-z0-9._-]+)?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# git's remote-helper syntax "<transport>::<address>" (ext::, fd::, ...).
_HELPER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*::")


@dataclass(frozen=True, slots=True)
class GitUrl:
    """A parsed network git remote.

    ``path`` is the repository path as written: it starts with ``/`` for the
    URL forms; for the scp-like form it is whatever follows the colon (which
    the server may take relative to the user's home). ``scp_like`` keeps the
    written form so :meth:`plain` gives git back what the user meant.
    """

    raw: str
    scheme: str
    host: str
    port: int | None
    path: str
    user: str | None
    scp_like: bool = False

    @property
    def netloc_host(self) -> str:
        """The host as it appears in a URL (IPv6 addresses in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def _hostport(self) -> str:
        return self.netloc_host if self.port is None else f"{self.netloc_host}:{self.port}"

    def plain(self) -> str:
        """The URL git is given and the clone's ``origin`` records.

        It carries no secret: an http(s) user name is dropped (it is handed to
        git through the credential helper instead, see ``docs/git.md``); an
        SSH login name is kept, it is part of the address.
        """
        if self.scp_like:
            user = f"{self.user}@" if self.user else ""
            return f"{user}{self.netloc_host}:{self.path}"
        user = f"{self.user}@" if self.user and self.scheme == "ssh" else ""
        return f"{self.scheme}://{user}{self._hostport()}{self.path}"

    def redacted(self) -> str:
        """A form safe to log or show: never contains a password or token.

        An http(s) user name is shown as ``***`` (tokens are often passed as
        the user name, e.g. ``https://<token>@github.com/...``).
        """
        if self.user and self.scheme in ("http", "https"):
            return f"{self.scheme}://***@{self._hostport()}{self.path}"
        return self.plain()

    def credential_scope(self) -> str:
        """``scheme://host[:port]``: what git matches ``credential.<url>.*`` against."""
        return f"{self.scheme}://{self._hostport()}"

    def effective_port(self) -> int:
        """The port git will connect to (the scheme's default when none is given)."""
        return self.port if self.port is not None else _DEFAULT_PORTS[self.scheme]

    def __str__(self) -> str:
        return self.redacted()


def _refuse(why: str) -> InvalidRequest:
    return InvalidRequest(f"invalid git URL: {why}")


def _check_host(host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if not inner or not _IPV6_RE.match(inner):
            raise _refuse("the host is not a valid IPv6 address")
        return inner
    if not host:
        raise _refuse("the URL names no host")
    if host.startswith("-"):
        raise _refuse("a host may not start with '-'")
    if not _HOSTNAME_RE.match(host):
        raise _refuse("the host name has characters a host name cannot have")
    return host


def _check_user(user: str) -> str:
    if not user:
        raise _refuse("the user name before '@' is empty")
    if user.startswith("-"):
        raise _refuse("a user name may not start with '-'")
    return user


def _check_path(path: str) -> str:
    stripped = path.lstrip("/")
    if not stripped:
        raise _refuse("the URL names no repository path")
    if stripped.startswith("-"):
        raise _refuse("a repository path may not start with '-'")
    return path


def _split_port(hostport: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _refuse("an IPv6 address is missing its closing ']'")
        host, after = hostport[: end + 1], hostport[end + 1 :]
        if not after:
            return host, None
        if not after.startswith(":"):
            raise _refuse("unexpected text after the IPv6 address")
        port_text = after[1:]
    elif ":" in hostport:
        host, port_text = hostport.rsplit(":", 1)
    else:
        return hostport, None
    if port_text == "":
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _refuse("the port must be a number from 1 to 65535")
    return host, int(port_text)


def _parse_url_form(raw: str, scheme_text: str, rest: str) -> GitUrl:
    scheme = _SCHEMES.get(scheme_text.lower())
    if scheme is None:
        if scheme_text.lower() == "file":
            raise _refuse("file:// URLs (local repositories) are not allowed")
        raise _refuse(f"unsupported scheme {scheme_text.lower()!r}; use https, http, ssh or git")
    if "?" in rest or "#" in rest:
        raise _refuse("query strings and fragments are not allowed in a git URL")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    user: str | None = None
    if "@" in authority:
        userinfo, authority = authority.rsplit("@", 1)
        if ":" in userinfo and scheme in ("http", "https"):
            # Never echo the secret, not even the user name next to it.
            raise InvalidRequest(
                "invalid git URL: it embeds a password or token; pass the URL "
                "without it and give the credentials separately (username/token)"
            )
        if ":" in userinfo:
            raise _refuse("a password in the URL is not allowed; use an SSH key")
        user = _check_user(unquote(userinfo))
    host_text, port = _split_port(authority)
    host = _check_host(host_text)
    return GitUrl(
        raw=raw,
        scheme=scheme,
        host=host,
        port=port,
        path=_check_path(path),
        user=user,
    )


def _parse_scp_form(raw: str) -> GitUrl:
    # git's rule: "[user@]host:path" when a ':' comes before any '/'.
    # A bracketed host may itself contain ':' ("[::1]:repo", "user@[::1]:repo").
    at_bracket = raw.find("@[")
    if raw.startswith("[") or at_bracket >= 0:
        start = 0 if raw.startswith("[") else at_bracket + 1
        end = raw.find("]:", start)
        if end < 0:
            raise _refuse("an IPv6 address is missing its closing ']'")
        userhost, path = raw[: end + 1], raw[end + 2 :]
    else:
        userhost, path = raw.split(":", 1)
    user: str | None = None
    if "@" in userhost:
        user_text, userhost = userhost.rsplit("@", 1)
        user = _check_user(user_text)
    host = _check_host(userhost)
    return GitUrl(
        raw=raw,
        scheme="ssh",
        host=host,
        port=None,
        path=_check_path(path),
        user=user,
        scp_like=True,
    )


def parse_git_url(url: str) -> GitUrl:
    """Parse ``url`` into a :class:`GitUrl`, or raise ``InvalidRequest``.

    Accepted: ``https://host[:port]/path``, ``http://...``,
    ``ssh://[user@]host[:port]/path`` (also ``git+ssh://``), the scp-like
    ``[user@]host:path`` and ``git://host[:port]/path``; any host, any path
    depth (GitLab's nested groups), with or without ``.git``.
    """
    if not isinstance(url, str):
        raise _refuse("the URL must be a string")
    text = url.strip()
    if not text:
        raise _refuse("the URL is empty")
    if _CONTROL_RE.search(text):
        raise _refuse("the URL contains control characters")
    if text.startswith("-"):
        raise _refuse("a URL may not start with '-' (it would read as an option)")
    match = _URL_RE.match(text)
    if match:
        return _parse_url_form(text, match["scheme"], match["rest"])
    if _HELPER_RE.match(text):
        raise _refuse("remote-helper transports ('transport::address', e.g. ext::) are not allowed")
    colon, slash = text.find(":"), text.find("/")
    if colon > 0 and (slash < 0 or colon < slash or text.startswith("[")):
        return _parse_scp_form(text)
    raise _refuse("local paths are not allowed; give a network URL (https, ssh or git)")
