"""Finding devcontainer.json in a repository, and the explicit choice."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from atelier.errors import FileNotFound, InvalidPath, InvalidRequest
from atelier.workspaces import find_devcontainer_configs, load_devcontainer, locate_devcontainer

WriteRepo = Callable[[dict[str, str]], Path]  # the write_repo fixture (conftest.py)
IMAGE = '{"image": "debian:12"}'


@pytest.mark.parametrize(
    "location",
    [
        ".devcontainer/devcontainer.json",
        ".devcontainer.json",
        ".devcontainer/python/devcontainer.json",
    ],
)
def test_each_location_alone_is_found(write_repo: WriteRepo, location: str) -> None:
    repo = write_repo({location: IMAGE})
    assert locate_devcontainer(repo) == repo / location


def test_none_found(write_repo: WriteRepo) -> None:
    repo = write_repo({"src/main.py": "", ".devcontainer/notes.txt": ""})
    assert find_devcontainer_configs(repo) == ()
    assert locate_devcontainer(repo) is None


def test_several_need_an_explicit_choice(write_repo: WriteRepo) -> None:
    repo = write_repo(
        {
            ".devcontainer/devcontainer.json": IMAGE,
            ".devcontainer.json": IMAGE,
            ".devcontainer/gpu/devcontainer.json": IMAGE,
            ".devcontainer/cpu/devcontainer.json": IMAGE,
        }
    )
    expected = [
        ".devcontainer/devcontainer.json",
        ".devcontainer.json",
        ".devcontainer/cpu/devcontainer.json",
        ".devcontainer/gpu/devcontainer.json",
    ]
    assert [p.relative_to(repo).as_posix() for p in find_devcontainer_configs(repo)] == expected
    with pytest.raises(InvalidRequest) as info:
        locate_devcontainer(repo)
    assert info.value.details == {"candidates": expected}
    assert "4 dev container configurations found" in info.value.message
    assert ".devcontainer/gpu/devcontainer.json" in info.value.message
    with pytest.raises(InvalidRequest):
        load_devcontainer(repo)


@pytest.mark.parametrize(
    ("explicit", "chosen"),
    [
        (".devcontainer/gpu/devcontainer.json", ".devcontainer/gpu/devcontainer.json"),
        (".devcontainer/gpu", ".devcontainer/gpu/devcontainer.json"),
        ("gpu", ".devcontainer/gpu/devcontainer.json"),
        (".devcontainer.json", ".devcontainer.json"),
        ("custom/dev.json", "custom/dev.json"),
    ],
)
def test_explicit_choice_overrides(write_repo: WriteRepo, explicit: str, chosen: str) -> None:
    repo = write_repo(
        {
            ".devcontainer/devcontainer.json": IMAGE,
            ".devcontainer.json": IMAGE,
            ".devcontainer/gpu/devcontainer.json": IMAGE,
            "custom/dev.json": IMAGE,
        }
    )
    assert locate_devcontainer(repo, explicit) == repo / chosen
    config = load_devcontainer(repo, config_path=explicit)
    assert config is not None and config.config_path == (repo / chosen).resolve()


def test_explicit_path_that_does_not_exist(write_repo: WriteRepo) -> None:
    repo = write_repo({".devcontainer/devcontainer.json": IMAGE})
    with pytest.raises(FileNotFound) as info:
        locate_devcontainer(repo, "nope/devcontainer.json")
    assert info.value.details["candidates"] == [".devcontainer/devcontainer.json"]
    assert "found: .devcontainer/devcontainer.json" in info.value.message


@pytest.mark.parametrize("explicit", ["../elsewhere.json", "/etc/passwd"])
def test_explicit_path_outside_the_repository(
    write_repo: WriteRepo, tmp_path: Path, explicit: str
) -> None:
    repo = write_repo({".devcontainer.json": IMAGE})
    (tmp_path / "elsewhere.json").write_text(IMAGE)
    with pytest.raises(InvalidPath):
        locate_devcontainer(repo, explicit)


def test_symlink_out_of_the_repository_is_not_a_candidate(
    write_repo: WriteRepo, tmp_path: Path
) -> None:
    outside = tmp_path / "host.json"
    outside.write_text(IMAGE)
    repo = write_repo({"README": ""})
    os.symlink(outside, repo / ".devcontainer.json")
    assert find_devcontainer_configs(repo) == ()
    with pytest.raises(InvalidPath):
        locate_devcontainer(repo, ".devcontainer.json")
