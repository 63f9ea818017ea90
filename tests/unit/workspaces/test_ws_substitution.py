"""${...} variables: the first pass, the containerEnv pass, unknown variables, devcontainerId."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from atelier.workspaces import (
    SubstitutionContext,
    compute_devcontainer_id,
    load_devcontainer,
    substitute,
    substitute_container_env,
)

WriteRepo = Callable[[dict[str, str]], Path]  # the write_repo fixture (conftest.py)

CTX = SubstitutionContext(
    local_env={"HOME": "/home/me", "EMPTY": "", "URL": "http://x"},
    local_workspace_folder="/srv/clones/my-repo",
    container_workspace_folder="/workspaces/my-repo",
    devcontainer_id="0123abc",
)


def sub(text: str) -> tuple[str, list[str]]:
    unresolved: list[str] = []
    out = substitute(text, CTX, unresolved)
    assert isinstance(out, str)
    return out, unresolved


def test_local_env() -> None:
    assert sub("${localEnv:HOME}/x") == ("/home/me/x", [])
    assert sub("${env:HOME}") == ("/home/me", [])  # the older alias
    assert sub("[${localEnv:NOPE}]") == ("[]", [])  # unset → empty
    assert sub("${localEnv:NOPE:fallback}") == ("fallback", [])
    assert sub("${localEnv:NOPE:a:b}") == ("a:b", [])  # the default may hold colons
    assert sub("${localEnv:EMPTY:dflt}") == ("", [])  # set but empty is set
    assert sub("${localEnv:HOME:unused}") == ("/home/me", [])


def test_workspace_folders_and_id() -> None:
    assert sub("${localWorkspaceFolder}") == ("/srv/clones/my-repo", [])
    assert sub("${localWorkspaceFolderBasename}") == ("my-repo", [])
    assert sub("${containerWorkspaceFolder}/src") == ("/workspaces/my-repo/src", [])
    assert sub("${containerWorkspaceFolderBasename}") == ("my-repo", [])
    assert sub("vol-${devcontainerId}") == ("vol-0123abc", [])


def test_container_env_is_left_for_the_second_pass_without_warning() -> None:
    assert sub("${containerEnv:PATH}:/x") == ("${containerEnv:PATH}:/x", [])


def test_unknown_variables_are_left_and_reported_once() -> None:
    out, unresolved = sub("${workspaceFolder} ${foo} ${localEnv} ${foo} ${localWorkspaceFolder:x}")
    assert out == "${workspaceFolder} ${foo} ${localEnv} ${foo} ${localWorkspaceFolder:x}"
    assert unresolved == [
        "${workspaceFolder}",
        "${foo}",
        "${localEnv}",
        "${localWorkspaceFolder:x}",
    ]


def test_values_are_substituted_recursively_but_keys_are_not() -> None:
    value = {
        "${localEnv:HOME}": ["${localEnv:HOME}", 1, None, {"k": "${localEnv:HOME}"}],
        "b": True,
    }
    assert substitute(value, CTX) == {
        "${localEnv:HOME}": ["/home/me", 1, None, {"k": "/home/me"}],
        "b": True,
    }


def test_substituted_text_is_not_substituted_again() -> None:
    ctx = SubstitutionContext(local_env={"A": "${localEnv:B}", "B": "secret"})
    assert substitute("${localEnv:A}", ctx) == "${localEnv:B}"


def test_second_pass() -> None:
    env = {"PATH": "/usr/bin", "EMPTY": ""}
    assert substitute_container_env("${containerEnv:PATH}:/x", env) == "/usr/bin:/x"
    assert substitute_container_env("${containerEnv:NOPE}", env) == ""
    assert substitute_container_env("${containerEnv:NOPE:/d}", env) == "/d"
    assert substitute_container_env("${localEnv:HOME}", env) == "${localEnv:HOME}"
    unresolved: list[str] = []
    assert substitute_container_env("${containerEnv}", env, unresolved) == "${containerEnv}"
    assert unresolved == ["${containerEnv}"]


def test_devcontainer_id_follows_the_spec_algorithm() -> None:
    labels = {"b": "2", "a": "1"}
    digest = hashlib.sha256(b'{"a":"1","b":"2"}').digest()
    number = int.from_bytes(digest, "big")
    alphabet = "0123456789abcdefghijklmnopqrstuv"
    digits = ""
    while number:
        number, rest = divmod(number, 32)
        digits = alphabet[rest] + digits
    result = compute_devcontainer_id(labels)
    assert result == digits.rjust(52, "0")
    assert len(result) == 52 and result.isalnum()
    assert compute_devcontainer_id({"a": "1", "b": "2"}) == result  # key order does not matter
    assert compute_devcontainer_id({"a": "1", "b": "3"}) != result


def test_in_a_configuration(write_repo: WriteRepo) -> None:
    repo = write_repo(
        {
            ".devcontainer.json": """
            {
              "image": "${localEnv:REGISTRY:docker.io}/library/debian:12",
              "workspaceFolder": "/code/${localWorkspaceFolderBasename}",
              "containerEnv": {"WS": "${containerWorkspaceFolder}",
                               "LWS": "${localWorkspaceFolder}",
                               "B": "${containerWorkspaceFolderBasename}"},
              "postCreateCommand": "echo ${unknownThing} ${localEnv:USER}",
              "remoteEnv": {"ODD": "${nope}"}
            }
            """
        }
    )
    config = load_devcontainer(repo, local_env={"USER": "ada"})
    assert config is not None
    assert config.image == "docker.io/library/debian:12"
    assert config.workspace_folder == "/code/myrepo"
    assert dict(config.container_env) == {
        "WS": "/code/myrepo",
        "LWS": str(repo.resolve()),
        "B": "myrepo",
    }
    command = config.command("postCreateCommand")
    assert command is not None and command.commands[0].argv == ("echo ${unknownThing} ada",)
    assert config.unresolved_variables == ("${unknownThing}", "${nope}")
    assert config.warnings == (
        ".devcontainer.json: unknown variables left as written: ${unknownThing}, ${nope}",
    )


def test_server_environment_is_not_local_env(write_repo: WriteRepo) -> None:
    repo = write_repo(
        {".devcontainer.json": '{"image": "x", "containerEnv": {"H": "${localEnv:PATH}"}}'}
    )
    config = load_devcontainer(repo)  # no local_env given: nothing from the server's os.environ
    assert config is not None and config.container_env["H"] == ""
