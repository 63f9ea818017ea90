"""``initializeCommand``: the one lifecycle hook that runs on the host.

It is code from the repository run outside any sandbox, so
:func:`~atelier.workspaces.plan_lifecycle` refuses a configuration that has
one unless the operator set ``allow_host_commands``. When allowed it runs
here, in the cloned repository, before the template is resolved (the spec:
"during initialization", before the container exists), with a minimal
environment and a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from ...errors import WorkspaceSetupFailed
from ...workspaces import Command, LifecyclePlan, StepLocation
from .setup_log import SetupLog

__all__ = ["HOST_COMMAND_TIMEOUT", "run_host_steps"]

HOST_COMMAND_TIMEOUT = 600.0
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")


async def _run(command: Command, cwd: Path, setup: SetupLog, source: str) -> int:
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env["HOME"] = str(cwd)
    proc = await asyncio.create_subprocess_exec(
        *command.to_argv(),
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(HOST_COMMAND_TIMEOUT):
            while chunk := await proc.stdout.read(65536):
                setup.output(source, chunk)
            return await proc.wait()
    except TimeoutError:
        setup.line(source, f"killed after {HOST_COMMAND_TIMEOUT:g}s")
        return 124
    finally:
        setup.flush(source)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def run_host_steps(plan: LifecyclePlan, repo_dir: Path, setup: SetupLog) -> None:
    """Run the plan's host steps (``initializeCommand``) in ``repo_dir``."""
    for step in plan.steps:
        if step.location is not StepLocation.HOST:
            continue
        source = f"{step.hook} (host)"
        setup.line(source, "running on the Atelier host")
        for command in step.commands:
            code = await _run(command, repo_dir, setup, source)
            if code != 0:
                raise WorkspaceSetupFailed(
                    f"{step.hook} failed on the host with exit code {code}: {command.display()}",
                    details={
                        "hook": str(step.hook),
                        "command": command.display(),
                        "exit_code": code,
                        "output": setup.tail(),
                    },
                )
