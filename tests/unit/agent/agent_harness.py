"""Helpers of the agent tests: run the real agent as a host subprocess, started
exactly like a runtime starts it (bootstrap argv, package mounted as ``agent``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atelier.agent import bootstrap

__all__ = ["AgentProcess", "pid_alive", "proc_state", "start_agent", "stop_agent", "wait_until"]


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path
    root: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def start_agent(root: Path, env: dict[str, str] | None = None) -> AgentProcess:
    mount = root / "mount"
    mount.mkdir(parents=True)
    (mount / "agent").symlink_to(bootstrap.package_dir())
    run = root / "run"
    argv = bootstrap.agent_argv(python=sys.executable, mount=str(mount), run_dir=str(run))
    proc = subprocess.Popen(
        argv, start_new_session=True, cwd=str(root), env={**os.environ, **(env or {})}
    )
    return AgentProcess(proc, run / bootstrap.SOCKET_NAME, run / bootstrap.LOG_NAME, root)


def stop_agent(agent: AgentProcess) -> None:
    agent.proc.send_signal(signal.SIGTERM)
    try:
        agent.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        agent.proc.kill()
        agent.proc.wait()


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, ppid) of a host process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def pid_alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state[0] != "Z"


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
