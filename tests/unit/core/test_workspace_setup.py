"""Workspace setup pieces without a sandbox: naming, image env, Feature builds,
the setup log, host commands and the lifecycle runner (over a fake agent)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from atelier.core.agent_client import AgentClient, Exit, Output, Started
from atelier.core.workspaces.host_commands import run_host_steps
from atelier.core.workspaces.lifecycle_runner import LifecycleRunner
from atelier.core.workspaces.service import image_env, repo_folder_name
from atelier.core.workspaces.setup_log import SetupLog
from atelier.core.workspaces.templates import features_dockerfile, resolve_features
from atelier.errors import ValidationFailed, WorkspaceSetupFailed
from atelier.git import parse_git_url
from atelier.workspaces import LifecycleStep, load_devcontainer, plan_lifecycle


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://gitlab.example.com/group/sub/app.git", "app"),
        ("git@github.com:org/tool.git", "tool"),
        ("ssh://git@host:2222/x/y/", "y"),
        ("https://gitea.local/owner/repo", "repo"),
    ],
)
def test_the_workspace_folder_is_named_after_the_repository(url: str, name: str) -> None:
    assert repo_folder_name(parse_git_url(url)) == name


def test_image_env_reads_the_image_config() -> None:
    manifest = {"image": {"env": ["PATH=/usr/bin:/bin", "EMPTY=", "A=b=c", "broken"]}}
    assert image_env(manifest) == {"PATH": "/usr/bin:/bin", "EMPTY": "", "A": "b=c"}
    assert image_env(None) == {} and image_env({"image": {}}) == {}


FEATURE = {
    ".devcontainer/hello/devcontainer-feature.json": json.dumps(
        {
            "id": "hello",
            "version": "1.0.0",
            "options": {"greeting": {"type": "string", "default": "hi"}},
            "containerEnv": {"HELLO_HOME": "/opt/hello"},
        }
    ),
    ".devcontainer/hello/install.sh": '#!/bin/sh\necho "$GREETING" > /greeting\n',
}


def test_local_features_become_a_generated_dockerfile(tmp_path: Path) -> None:
    repo = write(
        tmp_path / "app",
        {
            **FEATURE,
            ".devcontainer/devcontainer.json": json.dumps(
                {
                    "image": "debian:12",
                    "remoteUser": "dev",
                    "features": {"./hello": {"greeting": "hello world"}},
                }
            ),
        },
    )
    config = load_devcontainer(repo)
    assert config is not None
    features = resolve_features(config)
    dockerfile = features_dockerfile("img-1", features, config)
    lines = dockerfile.splitlines()
    assert lines[0] == "FROM img-1"
    assert "COPY feature-0/ /var/tmp/atelier-features/0/" in lines
    run = next(line for line in lines if line.startswith("RUN cd /var/tmp/atelier-features/0"))
    assert "GREETING='hello world'" in run and "_REMOTE_USER=dev" in run
    assert 'ENV HELLO_HOME="/opt/hello"' in lines
    assert lines[-1] == "RUN rm -rf /var/tmp/atelier-features"


def test_registry_features_must_be_fetched_before_they_are_resolved(tmp_path: Path) -> None:
    repo = write(
        tmp_path / "app",
        {
            ".devcontainer.json": json.dumps(
                {"image": "debian:12", "features": {"ghcr.io/devcontainers/features/node:1": {}}}
            )
        },
    )
    config = load_devcontainer(repo)
    assert config is not None
    with pytest.raises(ValidationFailed, match="without fetching them first"):
        resolve_features(config)


def test_setup_log_joins_output_chunks_into_lines(tmp_path: Path) -> None:
    log = SetupLog(tmp_path / "w" / "setup.log")
    log.output("postCreateCommand", b"first li")
    log.output("postCreateCommand", b"ne\nsecond\nthi")
    log.flush("postCreateCommand")
    lines = (tmp_path / "w" / "setup.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "[postCreateCommand] first line",
        "[postCreateCommand] second",
        "[postCreateCommand] thi",
    ]


def _plan(tmp_path: Path, config: dict[str, Any], *, allow_host: bool = False) -> Any:
    repo = write(tmp_path / "app", {".devcontainer.json": json.dumps(config)})
    loaded = load_devcontainer(repo)
    assert loaded is not None
    return plan_lifecycle(loaded, allow_host_commands=allow_host), repo


async def test_host_commands_run_in_the_repository(tmp_path: Path) -> None:
    plan, repo = _plan(
        tmp_path, {"image": "x", "initializeCommand": "pwd > ran-here"}, allow_host=True
    )
    await run_host_steps(plan, repo, SetupLog(tmp_path / "log"))
    assert (repo / "ran-here").read_text().strip() == str(repo)


async def test_a_failing_host_command_fails_setup_with_its_output(tmp_path: Path) -> None:
    plan, repo = _plan(
        tmp_path, {"image": "x", "initializeCommand": "echo nope; exit 3"}, allow_host=True
    )
    with pytest.raises(WorkspaceSetupFailed) as caught:
        await run_host_steps(plan, repo, SetupLog(tmp_path / "log"))
    assert caught.value.details["exit_code"] == 3
    assert "nope" in caught.value.details["output"]


class FakeSession:
    def __init__(self, events: list[Any], delay: float) -> None:
        self.events = events
        self.delay = delay
        self.detached = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        await asyncio.sleep(self.delay)
        for event in self.events:
            yield event

    async def detach(self) -> None:
        self.detached = True


class FakeAgent:
    """Runs nothing: answers each argv with scripted output and exit code."""

    def __init__(self, script: dict[str, tuple[bytes, int]]) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.running = 0
        self.max_running = 0

    async def exec(self, argv: Sequence[str], **kw: Any) -> FakeSession:
        self.calls.append({"argv": list(argv), **kw})
        output, code = self.script.get(argv[-1], (b"", 0))
        self.running += 1
        self.max_running = max(self.max_running, self.running)

        async def done() -> None:
            self.running -= 1

        events = [Started(pid=1), Output(1, output), Exit(code, None, False)]
        session = FakeSession(events, 0.05)
        original = session._iterate

        async def tracked() -> AsyncIterator[Any]:
            async for event in original():
                yield event
            await done()

        session._iterate = tracked  # type: ignore[method-assign]
        return session


def _steps(plan: Any) -> list[LifecycleStep]:
    return [s for s in plan.steps if s.location == "container"]


async def test_lifecycle_runs_in_order_with_env_cwd_and_user(tmp_path: Path) -> None:
    plan, _ = _plan(
        tmp_path,
        {
            "image": "x",
            "remoteUser": "dev",
            "onCreateCommand": "one",
            "postCreateCommand": {"a": "two", "b": "three"},
            "postStartCommand": ["four", "arg"],
        },
    )
    agent = FakeAgent({"two": (b"hello\n", 0)})
    log = SetupLog(tmp_path / "setup.log")
    runner = LifecycleRunner(cast(AgentClient, agent), log, env={"A": "1"}, cwd="/workspaces/app")
    await runner.run(_steps(plan))
    argvs = [c["argv"] for c in agent.calls]
    assert argvs[0] == ["/bin/sh", "-c", "one"]
    assert sorted(map(tuple, argvs[1:3])) == [("/bin/sh", "-c", "three"), ("/bin/sh", "-c", "two")]
    assert argvs[3] == ["four", "arg"]
    assert agent.max_running == 2  # the object form ran both at once
    assert {c["user"] for c in agent.calls} == {"dev"}
    assert {c["cwd"] for c in agent.calls} == {"/workspaces/app"}
    assert all(c["env"] == {"A": "1"} for c in agent.calls)
    assert [r.status for r in runner.records] == ["succeeded"] * 3
    assert "[postCreateCommand:a] hello" in log.path.read_text()


async def test_a_failing_step_stops_the_lifecycle_and_keeps_its_output(tmp_path: Path) -> None:
    plan, _ = _plan(
        tmp_path,
        {"image": "x", "onCreateCommand": "boom", "postCreateCommand": "never"},
    )
    agent = FakeAgent({"boom": (b"it broke\n", 7)})
    runner = LifecycleRunner(cast(AgentClient, agent), SetupLog(tmp_path / "l"), env={}, cwd="/w")
    with pytest.raises(WorkspaceSetupFailed) as caught:
        await runner.run(_steps(plan))
    assert caught.value.details["exit_code"] == 7
    assert caught.value.details["hook"] == "onCreateCommand"
    assert "it broke" in caught.value.details["output"]
    assert [c["argv"][-1] for c in agent.calls] == ["boom"]
    assert [(r.hook, r.status, r.exit_code) for r in runner.records] == [
        ("onCreateCommand", "failed", 7)
    ]
