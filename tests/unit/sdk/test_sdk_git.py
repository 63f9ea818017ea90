"""sandbox.git: porcelain status parsing and how git failures map to errors."""

from __future__ import annotations

import json

import httpx
import pytest
from sdk_fakes import SANDBOX, FakeApi

from atelier import GitAuth, Sandbox
from atelier.errors import (
    GitAuthenticationFailed,
    GitCommandFailed,
    GitUnreachable,
    InvalidRequest,
)
from atelier.sdk.git import _check, parse_status
from atelier.sdk.models import CommandResult


def test_status_with_upstream_changes_renames_and_untracked() -> None:
    status = parse_status(
        "## main...origin/main [ahead 2, behind 1]\n"
        " M src/app.py\n"
        "A  new.txt\n"
        "R  old.txt -> renamed.txt\n"
        "?? scratch/\n"
    )
    assert (status.branch, status.upstream, status.ahead, status.behind) == (
        "main",
        "origin/main",
        2,
        1,
    )
    assert [(f.path, f.index, f.worktree) for f in status.files] == [
        ("src/app.py", " ", "M"),
        ("new.txt", "A", " "),
        ("renamed.txt", "R", " "),
        ("scratch/", "?", "?"),
    ]
    assert status.files[-1].untracked and not status.clean


def test_status_of_a_new_repository_and_a_detached_head() -> None:
    assert parse_status("## No commits yet on trunk\n").branch == "trunk"
    detached = parse_status("## HEAD (no branch)\n")
    assert detached.branch is None and detached.clean


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ("fatal: Authentication failed for 'https://h/r.git/'", GitAuthenticationFailed),
        (
            "git@h: Permission denied (publickey).\nfatal: Could not read from remote",
            GitAuthenticationFailed,
        ),
        ("fatal: unable to access 'https://h/r.git/': Could not resolve host: h", GitUnreachable),
        ("nothing to commit, working tree clean", GitCommandFailed),
    ],
)
def test_failures_map_to_typed_errors(stderr: str, error: type[Exception]) -> None:
    result = CommandResult(stdout="", stderr=stderr, exit_code=1)
    with pytest.raises(error) as caught:
        _check(["push"], result)
    assert caught.value.details["exit_code"] == 1  # type: ignore[attr-defined]


def test_success_returns_stdout() -> None:
    assert _check(["status"], CommandResult(stdout="ok\n", stderr="", exit_code=0)) == "ok\n"


def test_a_repo_makes_a_workspace_request_and_git_calls_reach_the_server(fake: FakeApi) -> None:
    workspace = {**SANDBOX, "workspace": {"repo": "https://h/app.git", "folder": "/w/app",
                                          "status": "ready"}}  # fmt: skip
    fake.on("POST", "/v1/workspaces", httpx.Response(201, json=workspace))
    synced = {"remote": "origin", "branch": "main", "commit": "c" * 40, "updated": True}
    fake.on("POST", "/v1/sandboxes/sb-1/git/push", httpx.Response(200, json=synced))
    sb = Sandbox.create(
        repo="https://h/app.git",
        ref="v1",
        git_auth=GitAuth(token="t0k", username="me"),
        network={"mode": "egress", "allow": ["10.0.0.0/8"]},
        transport=fake.transport,
    )
    body = json.loads(fake.requests[-1].content)
    assert body["repo"] == "https://h/app.git" and body["ref"] == "v1"
    assert body["credentials"] == {"token": "t0k", "username": "me"}
    assert body["network"] == {"mode": "egress", "allow": ["10.0.0.0/8"]}
    assert "template" not in body and body["vcpus"] == 1
    assert sb.info.workspace is not None and sb.info.workspace.folder == "/w/app"
    assert "t0k" not in repr(GitAuth(token="t0k"))
    pushed = sb.git.push(secret="gitlab")
    assert pushed.updated and pushed.commit == "c" * 40
    assert json.loads(fake.requests[-1].content) == {
        "path": None, "remote": "origin", "branch": None, "secret": "gitlab",
    }  # fmt: skip
    with pytest.raises(InvalidRequest, match="need repo="):
        Sandbox.create(ref="main", transport=fake.transport)
