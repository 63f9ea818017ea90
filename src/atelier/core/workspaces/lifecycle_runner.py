"""Run a workspace's lifecycle steps (``onCreateCommand`` ... ``postAttachCommand``)
inside its sandbox, in plan order, through the agent.

A step's commands run one after the other, or all at once for the object
form; any that fails fails the step, and the steps after it do not run (the
Dev Container CLI's behaviour). Output goes to the setup log, tagged with the
hook (and the command's name in the object form). Every step's start, end
and exit code are recorded in the workspace's ``lifecycle`` list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...errors import WorkspaceSetupFailed
from ...workspaces import Command, LifecycleHook, LifecycleStep, StepLocation
from ..agent_client import AgentClient, Exit, Output
from .setup_log import SetupLog

__all__ = ["LifecycleRunner", "StepRecord", "step_from_json", "step_to_json"]

_OUTPUT_TAIL = 4000


def _now() -> str:
    return datetime.now(UTC).isoformat()


def step_to_json(step: LifecycleStep) -> dict[str, Any]:
    """A step as kept in the workspace record (to run again on later starts)."""
    return {
        "hook": str(step.hook),
        "origin": step.origin,
        "commands": [
            {"argv": list(c.argv), "shell": c.shell, "name": c.name} for c in step.commands
        ],
        "parallel": step.parallel,
        "user": step.user,
    }


def step_from_json(data: Mapping[str, Any]) -> LifecycleStep:
    return LifecycleStep(
        hook=LifecycleHook(data["hook"]),
        origin=str(data["origin"]),
        location=StepLocation.CONTAINER,
        commands=tuple(
            Command(argv=tuple(c["argv"]), shell=bool(c["shell"]), name=c.get("name"))
            for c in data["commands"]
        ),
        parallel=bool(data["parallel"]),
        user=data.get("user"),
        blocking=False,
    )


@dataclass(slots=True)
class StepRecord:
    hook: str
    origin: str
    started_at: str
    finished_at: str | None = None
    exit_code: int | None = None
    status: str = "running"  # running | succeeded | failed

    def to_json(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "origin": self.origin,
            "status": self.status,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class LifecycleRunner:
    """Runs steps with the workspace's environment, folder and user."""

    def __init__(
        self,
        agent: AgentClient,
        log: SetupLog,
        *,
        env: Mapping[str, str],
        cwd: str,
        on_record: Callable[[list[StepRecord]], Any] | None = None,
    ) -> None:
        self.agent = agent
        self.log = log
        self.env = dict(env)
        self.cwd = cwd
        self.records: list[StepRecord] = []
        self._on_record = on_record

    async def _notify(self) -> None:
        if self._on_record is not None:
            result = self._on_record(self.records)
            if asyncio.iscoroutine(result):
                await result

    async def run(self, steps: Sequence[LifecycleStep]) -> None:
        """Run ``steps`` in order; WorkspaceSetupFailed at the first that fails."""
        for step in steps:
            if step.location is not StepLocation.CONTAINER:
                continue  # initializeCommand: the caller decides (host commands)
            record = StepRecord(hook=str(step.hook), origin=step.origin, started_at=_now())
            self.records.append(record)
            await self._notify()
            self.log.line(str(step.hook), f"running ({step.origin})")
            try:
                if step.parallel:
                    codes = await asyncio.gather(*(self._one(step, c) for c in step.commands))
                else:
                    codes = []
                    for command in step.commands:
                        codes.append(await self._one(step, command))
                        if codes[-1][0] != 0:
                            break
            finally:
                record.finished_at = _now()
            failed = next(((code, cmd) for code, cmd in codes if code != 0), None)
            record.exit_code = failed[0] if failed else 0
            record.status = "failed" if failed else "succeeded"
            await self._notify()
            if failed is not None:
                code, command = failed
                self.log.line(str(step.hook), f"failed with exit code {code}")
                raise WorkspaceSetupFailed(
                    f"{step.hook} ({step.origin}) failed with exit code {code}: "
                    f"{command.display()}",
                    details={
                        "hook": str(step.hook),
                        "origin": step.origin,
                        "command": command.display(),
                        "exit_code": code,
                        "output": self.log.tail(_OUTPUT_TAIL),
                    },
                )
            self.log.line(str(step.hook), "done")

    async def _one(self, step: LifecycleStep, command: Command) -> tuple[int, Command]:
        source = f"{step.hook}:{command.name}" if command.name else str(step.hook)
        session = await self.agent.exec(
            argv=list(command.to_argv()),
            env=self.env,
            cwd=self.cwd,
            user=step.user,
            timeout=None,
        )
        code = -1
        try:
            async for event in session:
                if isinstance(event, Output):
                    self.log.output(source, event.data)
                elif isinstance(event, Exit):
                    code = event.exit_code
                    if event.signal or event.timed_out:
                        code = code or 1  # a killed command failed, whatever its status
                        self.log.line(source, f"killed ({event.signal or 'timeout'})")
        finally:
            self.log.flush(source)
            await session.detach()
        return code, command
