"""Bad devcontainer.json files: every problem reported at once, by property path and line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atelier.errors import ValidationFailed
from atelier.workspaces import load_devcontainer

WriteRepo = Callable[[dict[str, str]], Path]  # the write_repo fixture (conftest.py)


def errors_of(write_repo: WriteRepo, text: str, **files: str) -> ValidationFailed:
    repo = write_repo({".devcontainer/devcontainer.json": text, **files})
    with pytest.raises(ValidationFailed) as info:
        load_devcontainer(repo)
    assert info.value.details["file"] == ".devcontainer/devcontainer.json"
    return info.value


def problems(err: ValidationFailed) -> list[tuple[str, str, int | None]]:
    return [(e["path"], e["message"], e.get("line")) for e in err.details["errors"]]


def test_syntax_error_has_line_and_column(write_repo: WriteRepo) -> None:
    err = errors_of(write_repo, '{\n  "image": "debian:12"\n  "remoteUser": "me"\n}\n')
    assert "syntax error at line 3, column 3" in err.message
    assert err.details["errors"][0]["line"] == 3


def test_schema_violations_point_at_the_property_and_line(write_repo: WriteRepo) -> None:
    err = errors_of(
        write_repo,
        """
        {
          "build": {
            "dockerfile": 42,
            "args": {"A": 1},
            "dockerfil": "typo"
          },
          "forwardPorts": [3000, "not a port", 70000],
          "waitFor": "postAttachCommand",
          "hostRequirements": {"memory": "1.5tb", "cpus": 0},
          "postCreateCommand": {"ok": "echo", "bad": 5},
          "containerEnv": {"A": true}
        }
        """,
    )
    found = problems(err)
    assert ("build.dockerfile", "42 is not of type 'string'", 3) in found
    assert ("build.args.A", "1 is not of type 'string'", 4) in found
    unknown = next(f for f in found if f[0] == "build.dockerfil")
    assert unknown[1].startswith(
        "unknown property (allowed here: args, cacheFrom, context, dockerfile"
    )
    assert unknown[2] == 5
    assert (
        "forwardPorts[1]",
        "'not a port' is not a port: a number, or \"host:port\" with a lower-case host",
        7,
    ) in found
    assert ("forwardPorts[2]", "70000 is greater than the maximum of 65535", 7) in found
    assert any(f[0] == "waitFor" and "is not one of" in f[1] and f[2] == 8 for f in found)
    assert (
        "hostRequirements.memory",
        "'1.5tb' is not a size: a whole number of bytes, or of kb, mb, gb or tb (e.g. '8gb')",
        9,
    ) in found
    assert ("hostRequirements.cpus", "0 is less than the minimum of 1", 9) in found
    assert ("postCreateCommand.bad", "5 is not of type 'string', 'array'", 10) in found
    assert ("containerEnv.A", "True is not of type 'string'", 11) in found
    assert len(found) == 10  # all at once, no noise from the schema's oneOf branches
    assert "line 3: build.dockerfile: 42 is not of type 'string'" in err.message
    assert err.message.startswith(
        ".devcontainer/devcontainer.json: does not match the Dev Container schema (10 problems): "
    )
    lines = [f[2] or 0 for f in found]
    assert lines == sorted(lines)


def test_image_and_build_exclude_each_other(write_repo: WriteRepo) -> None:
    err = errors_of(write_repo, '{"image": "x", "build": {"dockerfile": "D"}}')
    assert problems(err) == [
        ("image", "'image' and 'build' (a Dockerfile) exclude each other: use one of them", 1)
    ]


def test_image_or_build_is_required(write_repo: WriteRepo) -> None:
    err = errors_of(write_repo, '{"name": "nothing to run"}')
    assert problems(err) == [("", "one of 'image' or 'build' (with 'dockerfile') is required", 1)]
    err = errors_of(write_repo, '{"remoteUser": 5}')  # reported with the other problems
    assert problems(err) == [
        ("", "one of 'image' or 'build' (with 'dockerfile') is required", 1),
        ("remoteUser", "5 is not of type 'string'", 1),
    ]


def test_build_needs_a_dockerfile(write_repo: WriteRepo) -> None:
    err = errors_of(write_repo, '{"build": {"context": ".."}}')
    assert problems(err) == [("build", "'dockerfile' is a required property", 1)]


def test_compose_is_refused(write_repo: WriteRepo) -> None:
    text = '{"dockerComposeFile": "c.yml", "service": "app", "workspaceFolder": "/w"}'
    err = errors_of(write_repo, text)
    assert problems(err) == [
        (
            "dockerComposeFile",
            "Docker Compose configurations are not supported: use 'image' or 'build'",
            1,
        )
    ]
    err = errors_of(write_repo, '{"dockerComposeFile": 5}')  # before any schema problem
    assert "Docker Compose" in problems(err)[0][1]


def test_top_level_must_be_an_object(write_repo: WriteRepo) -> None:
    err = errors_of(write_repo, "[1, 2]")
    assert problems(err)[0][1] == "the configuration must be a JSON object, not list"


def test_missing_dockerfile_names_the_resolved_path(write_repo: WriteRepo, tmp_path: Path) -> None:
    err = errors_of(write_repo, '{\n  "build": {"dockerfile": "../docker/Dockerfile.dev"}\n}')
    [(path, message, line)] = problems(err)
    resolved = (tmp_path / "myrepo/docker/Dockerfile.dev").resolve()
    assert (path, line) == ("build.dockerfile", 2)
    assert message == (
        "Dockerfile not found: '../docker/Dockerfile.dev' resolves to "
        f"docker/Dockerfile.dev ({resolved})"
    )
    assert "docker/Dockerfile.dev" in err.message


def test_context_must_be_a_directory(write_repo: WriteRepo) -> None:
    err = errors_of(
        write_repo,
        '{"build": {"dockerfile": "Dockerfile", "context": "nope"}}',
        **{".devcontainer/Dockerfile": "FROM x"},
    )
    [(path, message, _)] = problems(err)
    assert path == "build.context"
    assert message.startswith("build context is not a directory: .devcontainer/nope")


def test_paths_may_not_leave_the_repository(write_repo: WriteRepo, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("FROM x")
    err = errors_of(write_repo, '{"build": {"dockerfile": "../../outside", "context": "../.."}}')
    found = problems(err)
    assert [f[0] for f in found] == ["build.dockerfile", "build.context"]
    assert all("outside the repository" in f[1] for f in found)


def test_symlinked_dockerfile_may_not_leave_the_repository(
    write_repo: WriteRepo, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host file")
    repo = write_repo(
        {".devcontainer/devcontainer.json": '{"build": {"dockerfile": "Dockerfile"}}'}
    )
    os.symlink(secret, repo / ".devcontainer/Dockerfile")
    with pytest.raises(ValidationFailed) as info:
        load_devcontainer(repo)
    assert "outside the repository" in info.value.details["errors"][0]["message"]


def test_semantic_problems_are_reported_together(write_repo: WriteRepo) -> None:
    err = errors_of(
        write_repo,
        """
        {
          "build": {"dockerfile": "Missing"},
          "workspaceFolder": "relative/path",
          "forwardPorts": [0],
          "features": {
            "node": {},
            "./missing-local": {},
            "../../escape": {},
            "ghcr.io/OK/x:bad tag": {},
            "ghcr.io/devcontainers/features/go:1": {"version": ["1"]}
          },
          "overrideFeatureInstallOrder": ["ghcr.io/not/listed"]
        }
        """,
    )
    found = {f[0]: f[1] for f in problems(err)}
    assert set(found) == {
        "build.dockerfile",
        "workspaceFolder",
        "forwardPorts[0]",
        "features.node",
        'features["./missing-local"]',
        'features["../../escape"]',
        'features["ghcr.io/OK/x:bad tag"]',
        'features["ghcr.io/devcontainers/features/go:1"]',
        "overrideFeatureInstallOrder[0]",
    }
    assert found["workspaceFolder"] == "'relative/path' is not an absolute path"
    assert found["forwardPorts[0]"] == "port 0 is outside 1-65535"
    assert "legacy short ids" in found["features.node"]
    assert "try ghcr.io/devcontainers/features/node:1" in found["features.node"]
    assert (
        "no devcontainer-feature.json in .devcontainer/missing-local"
        in found['features["./missing-local"]']
    )
    assert "must live in the repository's .devcontainer folder" in found['features["../../escape"]']
    assert "not a valid tag" in found['features["ghcr.io/OK/x:bad tag"]']
    assert (
        "must be a string or a boolean" in found['features["ghcr.io/devcontainers/features/go:1"]']
    )
    assert found["overrideFeatureInstallOrder[0]"] == "'ghcr.io/not/listed' is not in 'features'"


def test_oversized_file_is_refused(write_repo: WriteRepo) -> None:
    big: dict[str, Any] = {"image": "x", "containerEnv": {f"K{i}": "v" * 1000 for i in range(1100)}}
    repo = write_repo({".devcontainer.json": json.dumps(big)})
    with pytest.raises(ValidationFailed, match="larger than"):
        load_devcontainer(repo)
