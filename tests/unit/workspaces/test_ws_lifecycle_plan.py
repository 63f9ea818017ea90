"""Lifecycle commands: the three forms, the run order, waitFor, host commands, Features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from atelier.errors import PermissionDenied
from atelier.workspaces import (
    Command,
    DevContainerConfig,
    LifecycleHook,
    LifecycleStage,
    StepLocation,
    load_devcontainer,
    parse_feature_metadata,
    parse_lifecycle_command,
    plan_lifecycle,
)

WriteRepo = Callable[[dict[str, str]], Path]  # the write_repo fixture (conftest.py)

ALL_HOOKS = """
{
  "image": "debian:12",
  "remoteUser": "dev",
  "containerUser": "root",
  "initializeCommand": "touch /tmp/host-side",
  "onCreateCommand": "echo create",
  "updateContentCommand": ["make", "deps"],
  "postCreateCommand": {"a": "echo a", "b": ["echo", "b"]},
  "postStartCommand": "echo start",
  "postAttachCommand": "echo attach"
  %s
}
"""


def config_with(
    write_repo: WriteRepo, extra: str = "", text: str = ALL_HOOKS
) -> DevContainerConfig:
    repo = write_repo({".devcontainer.json": text % extra})
    config = load_devcontainer(repo)
    assert config is not None
    return config


def test_the_three_forms() -> None:
    shell = parse_lifecycle_command("postCreateCommand", "npm ci && npm test")
    assert shell is not None and not shell.parallel
    assert shell.commands == (Command(("npm ci && npm test",), shell=True),)
    assert shell.commands[0].to_argv() == ("/bin/sh", "-c", "npm ci && npm test")
    assert shell.commands[0].to_argv(("/bin/bash", "-lc")) == (
        "/bin/bash",
        "-lc",
        "npm ci && npm test",
    )

    argv = parse_lifecycle_command(LifecycleHook.POST_CREATE, ["echo", "foo='bar'"])
    assert argv is not None and argv.commands == (Command(("echo", "foo='bar'"), shell=False),)
    assert argv.commands[0].to_argv() == ("echo", "foo='bar'")

    parallel = parse_lifecycle_command(
        "postCreateCommand", {"x": "make x", "y": ["make", "y"], "z": ""}
    )
    assert parallel is not None and parallel.parallel
    assert parallel.commands == (
        Command(("make x",), shell=True, name="x"),
        Command(("make", "y"), shell=False, name="y"),
    )
    assert [c.display() for c in parallel.commands] == ["x: make x", "y: make y"]


@pytest.mark.parametrize("empty", [None, "", "   ", [], {}, {"a": ""}])
def test_empty_commands_are_absent(empty: object) -> None:
    assert parse_lifecycle_command("onCreateCommand", empty) is None


def test_bad_shape_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_lifecycle_command("onCreateCommand", 5)


def test_order_and_default_wait_for(write_repo: WriteRepo) -> None:
    plan = plan_lifecycle(config_with(write_repo), allow_host_commands=True)
    assert [s.hook for s in plan.steps] == list(LifecycleHook)
    assert plan.wait_for is LifecycleHook.UPDATE_CONTENT
    assert [s.hook.value for s in plan.blocking] == [
        "initializeCommand",
        "onCreateCommand",
        "updateContentCommand",
    ]
    assert [s.hook.value for s in plan.background] == [
        "postCreateCommand",
        "postStartCommand",
        "postAttachCommand",
    ]
    [host] = plan.host_steps
    assert host.hook is LifecycleHook.INITIALIZE and host.location is StepLocation.HOST
    assert host.user is None
    inside = [s for s in plan.steps if s.location is StepLocation.CONTAINER]
    assert {s.user for s in inside} == {"dev"}  # remoteUser wins over containerUser
    post_create = plan.steps[3]
    assert post_create.parallel and len(post_create.commands) == 2
    assert all(s.origin == "devcontainer.json" for s in plan.steps)


@pytest.mark.parametrize(
    ("wait_for", "blocking"),
    [
        ("initializeCommand", 1),
        ("onCreateCommand", 2),
        ("updateContentCommand", 3),
        ("postCreateCommand", 4),
        ("postStartCommand", 5),
    ],
)
def test_wait_for_split(write_repo: WriteRepo, wait_for: str, blocking: int) -> None:
    config = config_with(write_repo, f', "waitFor": "{wait_for}"')
    plan = plan_lifecycle(config, allow_host_commands=True)
    assert plan.wait_for.value == wait_for
    assert len(plan.blocking) == blocking
    assert len(plan.background) == 6 - blocking
    assert plan.steps[-1].hook is LifecycleHook.POST_ATTACH and not plan.steps[-1].blocking


def test_host_command_is_refused_unless_allowed(write_repo: WriteRepo) -> None:
    config = config_with(write_repo)
    with pytest.raises(PermissionDenied) as info:
        plan_lifecycle(config)
    assert info.value.details["property"] == "initializeCommand"
    assert "touch /tmp/host-side" in info.value.message
    # attaching never runs the host command, so it needs no permission
    attach = plan_lifecycle(config, stage=LifecycleStage.ATTACH)
    assert [s.hook for s in attach.steps] == [LifecycleHook.POST_ATTACH]


def test_no_host_command_needs_no_permission(write_repo: WriteRepo) -> None:
    repo = write_repo({".devcontainer.json": '{"image": "x", "postCreateCommand": "true"}'})
    config = load_devcontainer(repo)
    assert config is not None
    plan = plan_lifecycle(config)
    assert [s.hook for s in plan.steps] == [LifecycleHook.POST_CREATE]
    assert plan.blocking == () and plan.steps[0].user is None


def test_restart_stage(write_repo: WriteRepo) -> None:
    plan = plan_lifecycle(
        config_with(write_repo), allow_host_commands=True, stage=LifecycleStage.START
    )
    assert [s.hook.value for s in plan.steps] == [
        "initializeCommand",
        "postStartCommand",
        "postAttachCommand",
    ]
    assert [s.hook.value for s in plan.blocking] == ["initializeCommand"]


def test_feature_commands_run_first_for_each_hook(write_repo: WriteRepo) -> None:
    feature = parse_feature_metadata(
        """
        {"id": "tool", "version": "1.0.0",
         "onCreateCommand": "tool init", "postStartCommand": {"d": "tool daemon"}}
        """
    )
    plan = plan_lifecycle(config_with(write_repo), allow_host_commands=True, features=[feature])
    assert [(s.hook.value, s.origin) for s in plan.steps] == [
        ("initializeCommand", "devcontainer.json"),
        ("onCreateCommand", "tool"),
        ("onCreateCommand", "devcontainer.json"),
        ("updateContentCommand", "devcontainer.json"),
        ("postCreateCommand", "devcontainer.json"),
        ("postStartCommand", "tool"),
        ("postStartCommand", "devcontainer.json"),
        ("postAttachCommand", "devcontainer.json"),
    ]
    assert plan.steps[1].blocking and plan.steps[5].parallel
