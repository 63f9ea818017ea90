"""parse_git_url: every accepted form, and every refusal (no network)."""

from __future__ import annotations

import pytest

from atelier.errors import InvalidRequest
from atelier.git import GitUrl, parse_git_url


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "path", "user"),
    [
        ("https://github.com/owner/repo.git", "https", "github.com", None, "/owner/repo.git", None),
        ("https://github.com/owner/repo", "https", "github.com", None, "/owner/repo", None),
        (
            "https://gitlab.com/group/sub/subsub/project.git",
            "https",
            "gitlab.com",
            None,
            "/group/sub/subsub/project.git",
            None,
        ),
        (
            "https://bitbucket.org/team/repo.git",
            "https",
            "bitbucket.org",
            None,
            "/team/repo.git",
            None,
        ),
        (
            "https://gitea.example.com:3000/org/repo.git",
            "https",
            "gitea.example.com",
            3000,
            "/org/repo.git",
            None,
        ),
        ("http://127.0.0.1:8080/repo.git", "http", "127.0.0.1", 8080, "/repo.git", None),
        ("HTTPS://Example.COM/a/b", "https", "Example.COM", None, "/a/b", None),
        (
            "ssh://git@github.com/owner/repo.git",
            "ssh",
            "github.com",
            None,
            "/owner/repo.git",
            "git",
        ),
        (
            "ssh://host.example:2222/srv/git/x.git",
            "ssh",
            "host.example",
            2222,
            "/srv/git/x.git",
            None,
        ),
        ("git+ssh://git@host/x.git", "ssh", "host", None, "/x.git", "git"),
        ("ssh://git@[::1]:2222/x.git", "ssh", "::1", 2222, "/x.git", "git"),
        ("git@github.com:owner/repo.git", "ssh", "github.com", None, "owner/repo.git", "git"),
        (
            "git@gitlab.com:group/sub/project.git",
            "ssh",
            "gitlab.com",
            None,
            "group/sub/project.git",
            "git",
        ),
        ("example.com:repo.git", "ssh", "example.com", None, "repo.git", None),
        ("deploy@host:/srv/git/repo.git", "ssh", "host", None, "/srv/git/repo.git", "deploy"),
        ("git@[::1]:repo.git", "ssh", "::1", None, "repo.git", "git"),
        (
            "git://git.kernel.org/pub/scm/git/git.git",
            "git",
            "git.kernel.org",
            None,
            "/pub/scm/git/git.git",
            None,
        ),
        ("git://host:9419/x", "git", "host", 9419, "/x", None),
        ("  https://github.com/o/r  ", "https", "github.com", None, "/o/r", None),
    ],
)
def test_accepted_forms(
    url: str, scheme: str, host: str, port: int | None, path: str, user: str | None
) -> None:
    parsed = parse_git_url(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.path, parsed.user) == (
        scheme,
        host,
        port,
        path,
        user,
    )
    assert parsed.raw == url.strip()


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("https://github.com/o/r.git", "https://github.com/o/r.git"),
        ("ssh://git@host:2222/x.git", "ssh://git@host:2222/x.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("git@[::1]:r.git", "git@[::1]:r.git"),
        ("ssh://[::1]:22/r.git", "ssh://[::1]:22/r.git"),
        ("https://someuser@host/r.git", "https://host/r.git"),
    ],
)
def test_plain_round_trips(url: str, plain: str) -> None:
    assert parse_git_url(url).plain() == plain


def test_https_user_is_masked_in_redacted_form() -> None:
    url = parse_git_url("https://ghp_abcdef123456@github.com/o/r.git")
    assert url.user == "ghp_abcdef123456"
    assert "ghp_abcdef123456" not in url.redacted()
    assert "ghp_abcdef123456" not in url.plain()
    assert "ghp_abcdef123456" not in str(url)
    assert url.redacted() == "https://***@github.com/o/r.git"


def test_ssh_user_is_kept() -> None:
    assert parse_git_url("git@github.com:o/r.git").redacted() == "git@github.com:o/r.git"


def test_credential_scope_and_ports() -> None:
    assert parse_git_url("http://127.0.0.1:81/r").credential_scope() == "http://127.0.0.1:81"
    assert parse_git_url("https://h/r").credential_scope() == "https://h"
    assert parse_git_url("https://h/r").effective_port() == 443
    assert parse_git_url("git@h:r").effective_port() == 22
    assert parse_git_url("git://h/r").effective_port() == 9418


def test_is_a_frozen_dataclass() -> None:
    url = parse_git_url("https://h/r")
    assert isinstance(url, GitUrl)
    with pytest.raises(AttributeError):
        url.host = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("file:///etc/passwd", "file://"),
        ("FILE:///srv/repo.git", "file://"),
        ("/srv/git/repo.git", "local path"),
        ("./repo", "local path"),
        ("../repo", "local path"),
        ("~/repo.git", "local path"),
        ("repo", "local path"),
        ("./a:b", "local path"),
        ("ext::sh -c touch% /tmp/pwned", "remote-helper"),
        ("fd::17", "remote-helper"),
        ("ext::ssh host", "remote-helper"),
        ("--upload-pack=touch /tmp/x", "'-'"),
        ("-oProxyCommand=x:y", "'-'"),
        ("ssh://-oProxyCommand=touch/x", "'-'"),
        ("ssh://git@-oProxyCommand=x/x", "'-'"),
        ("ssh://-user@host/x", "'-'"),
        ("-host:repo", "'-'"),
        ("https://host/-repo", "'-'"),
        ("https://github.com/o/r\n.git", "control"),
        ("https://github.com/o/r\x00", "control"),
        ("https://git\thub.com/o/r", "control"),
        ("ftp://host/repo.git", "unsupported scheme"),
        ("rsync://host/repo.git", "unsupported scheme"),
        ("https://github.com", "no repository path"),
        ("https://github.com/", "no repository path"),
        ("https:///o/r", "no host"),
        ("https://host:99999/r", "port"),
        ("https://host:abc/r", "port"),
        ("https://ho st/r", "host name"),
        ("https://host/r?private_token=x", "query"),
        ("https://host/r#frag", "query"),
        ("ssh://[::1/r", "']'"),
        ("git@host:", "no repository path"),
    ],
)
def test_refused(url: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_git_url(url)
    assert says in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:hunter2-secret@github.com/o/r.git",
        "http://x-access-token:hunter2-secret@127.0.0.1:81/r",
        "https://:hunter2-secret@host/r",
    ],
)
def test_password_in_url_is_refused_without_echo(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_git_url(url)
    text = str(info.value) + repr(info.value.details)
    assert "hunter2-secret" not in text
    assert "credentials separately" in text


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        parse_git_url(None)  # type: ignore[arg-type]
