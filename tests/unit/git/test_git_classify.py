"""classify_failure: git's stderr -> the Atelier error class."""

from __future__ import annotations

import pytest

from atelier.errors import (
    GitAuthenticationFailed,
    GitRefNotFound,
    GitRepositoryNotFound,
    GitUnreachable,
    RuntimeFailure,
)
from atelier.git import parse_git_url
from atelier.git.classify import classify_failure

URL = parse_git_url("https://tokenuser@github.com/o/r.git")


NO_READ = "\nfatal: Could not read from remote repository."
CASES: list[tuple[str, type]] = [
    (
        "fatal: could not read Username for 'https://github.com': terminal prompts disabled",
        GitAuthenticationFailed,
    ),
    (
        "remote: Invalid username or password.\n"
        "fatal: Authentication failed for 'https://github.com/o/r.git/'",
        GitAuthenticationFailed,
    ),
    ("fatal: unable to access 'x': The requested URL returned error: 403", GitAuthenticationFailed),
    ("git@h: Permission denied (publickey).\r" + NO_READ, GitAuthenticationFailed),
    (
        "remote: Repository not found.\nfatal: repository 'https://github.com/o/r/' not found",
        GitRepositoryNotFound,
    ),
    ("fatal: unable to access 'x': The requested URL returned error: 404", GitRepositoryNotFound),
    ("fatal: '/srv/x.git' does not appear to be a git repository" + NO_READ, GitRepositoryNotFound),
    ("ERROR: Repository not found." + NO_READ, GitRepositoryNotFound),
    ("fatal: unable to access 'x': Could not resolve host: nope.invalid", GitUnreachable),
    (
        "fatal: unable to access 'http://127.0.0.1:1/r/': Failed to connect to 127.0.0.1 "
        "port 1 after 0 ms: Couldn't connect to server",
        GitUnreachable,
    ),
    ("ssh: connect to host 127.0.0.1 port 1: Connection refused\r" + NO_READ, GitUnreachable),
    ("ssh: Could not resolve hostname nope: Name or service not known", GitUnreachable),
    ("fatal: unable to access 'x': The requested URL returned error: 502", GitUnreachable),
    ("Host key verification failed.\r" + NO_READ, GitUnreachable),
    ("fatal: unable to access 'x': SSL certificate problem: self-signed", GitUnreachable),
    ("fatal: couldn't find remote ref refs/heads/nope", GitRefNotFound),
    (
        "fatal: remote error: upload-pack: not our ref 1234\n"
        "fatal: the remote end hung up unexpectedly",
        GitRefNotFound,
    ),
    ("fatal: something entirely different", RuntimeFailure),
    ("", RuntimeFailure),
]


@pytest.mark.parametrize(("stderr", "cls"), CASES)
def test_classification(stderr: str, cls: type) -> None:
    err = classify_failure(stderr, URL, action="cloning")
    assert type(err) is cls
    assert "tokenuser" not in err.message
    assert "tokenuser" not in repr(err.details)
    assert err.message.startswith("cloning https://***@github.com/o/r.git")


def test_ambiguity_is_explained() -> None:
    auth = classify_failure("fatal: Authentication failed for 'x'", URL, action="cloning")
    assert "does not exist" in auth.message
    missing = classify_failure("remote: Repository not found.", URL, action="cloning")
    assert "private" in missing.message


def test_git_output_tail_is_kept() -> None:
    err = classify_failure("a\nb\nfatal: weird", URL, action="cloning")
    assert err.details["git_output"].endswith("fatal: weird")
