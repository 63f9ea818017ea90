"""GitCredentials never shows its secrets; GitEnvironment keeps them out of files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from atelier.errors import InvalidRequest
from atelier.git import DEFAULT_HTTPS_USERNAME, GitCredentials, parse_git_url
from atelier.git.environment import TOKEN_ENV, USERNAME_ENV, GitEnvironment

TOKEN = "tok-very-secret-123"
KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsecretkeymaterial\n-----END OPENSSH PRIVATE KEY-----"
)


def test_repr_hides_secrets() -> None:
    creds = GitCredentials(
        username="alice", token=TOKEN, ssh_private_key=KEY, ssh_known_hosts="h k"
    )
    for text in (repr(creds), str(creds), f"{creds}", f"{[creds]}"):
        assert TOKEN not in text
        assert "secretkeymaterial" not in text
        assert "alice" in text


def test_default_username() -> None:
    assert GitCredentials(token=TOKEN).https_username == DEFAULT_HTTPS_USERNAME == "x-access-token"
    assert GitCredentials(username="bob", token=TOKEN).https_username == "bob"


@pytest.mark.parametrize(
    "kwargs",
    [{"token": "a\nb"}, {"username": "a\rb"}, {"token": ""}, {"ssh_private_key": "  "}],
)
def test_bad_values_are_refused(kwargs: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest) as info:
        GitCredentials(**kwargs)
    assert "a\nb" not in info.value.message


def _all_text(root: Path) -> str:
    return "".join(p.read_text() for p in root.rglob("*") if p.is_file())


def test_https_environment_keeps_token_in_env_only() -> None:
    url = parse_git_url("https://git.example.com:8443/o/r.git")
    with GitEnvironment(url, GitCredentials(token=TOKEN)) as env:
        assert env.home is not None
        home = env.home
        assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
        assert TOKEN not in _all_text(home)
        assert env.vars[TOKEN_ENV] == TOKEN
        assert env.vars[USERNAME_ENV] == "x-access-token"
        config = (home / "gitconfig").read_text()
        assert '[credential "https://git.example.com:8443"]' in config
        assert "allow = never" in config
        assert env.vars["GIT_TERMINAL_PROMPT"] == "0"
        assert env.vars["GIT_CONFIG_NOSYSTEM"] == "1"
        assert env.vars["GIT_ALLOW_PROTOCOL"] == "https:http:ssh:git"
        assert env.vars["HOME"] == str(home)
        assert "SSH_AUTH_SOCK" not in env.vars
        assert not any(k.startswith("GIT_") and k not in env.vars for k in os.environ)
    assert not home.exists()


def test_url_user_becomes_the_https_username() -> None:
    url = parse_git_url("https://bob@host/r.git")
    with GitEnvironment(url, GitCredentials(token=TOKEN)) as env:
        assert env.vars[USERNAME_ENV] == "bob"


def test_no_credentials_no_helper() -> None:
    with GitEnvironment(parse_git_url("https://host/r.git"), None) as env:
        assert env.home is not None
        assert TOKEN_ENV not in env.vars
        assert '[credential "' not in (env.home / "gitconfig").read_text()


def test_ssh_environment_writes_a_private_key_and_pins_hosts() -> None:
    url = parse_git_url("ssh://git@git.example.com:2222/r.git")
    creds = GitCredentials(
        ssh_private_key=KEY, ssh_known_hosts="[git.example.com]:2222 ssh-ed25519 AAAA"
    )
    with GitEnvironment(url, creds) as env:
        assert env.home is not None
        home = env.home
        key = home / "id_key"
        assert key.read_text().endswith("\n")
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        ssh_config = (home / "ssh_config").read_text()
        assert "Host git.example.com\n" in ssh_config
        assert "StrictHostKeyChecking yes" in ssh_config
        assert "IdentitiesOnly yes" in ssh_config
        assert "BatchMode yes" in ssh_config
        assert "IdentityAgent none" in ssh_config
        assert "ssh-ed25519 AAAA" in (home / "known_hosts").read_text()
        assert env.vars["GIT_SSH_COMMAND"] == f"ssh -F {home / 'ssh_config'}"
        assert "secretkeymaterial" not in env.vars["GIT_SSH_COMMAND"]
        assert TOKEN_ENV not in env.vars
    assert not key.exists()


def test_ssh_without_known_hosts_accepts_new() -> None:
    url = parse_git_url("git@host:r.git")
    with GitEnvironment(url, GitCredentials(ssh_private_key=KEY)) as env:
        assert env.home is not None
        assert "StrictHostKeyChecking accept-new" in (env.home / "ssh_config").read_text()
