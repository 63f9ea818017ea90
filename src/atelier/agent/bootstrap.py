"""How a runtime starts the agent inside a sandbox.

The agent package directory is mounted read-only at ``{AGENT_MOUNT}/agent``
and a host-visible, writable directory at :data:`RUN_DIR` receives the agent's
unix socket and log. The agent runs as the sandbox's init (PID 1).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AGENT_MOUNT",
    "LOG_NAME",
    "RUN_DIR",
    "SOCKET_NAME",
    "agent_argv",
    "package_dir",
]

AGENT_MOUNT = "/.atelier"
RUN_DIR = "/run/atelier"
SOCKET_NAME = "agent.sock"
LOG_NAME = "agent.log"

# ``sys.modules['ssl'] = None``: asyncio imports ssl only opportunistically and
# the agent never speaks TLS; skipping it (and ``site``, via -S) takes about a
# third off the agent's start under gVisor's ptrace platform, where every
# import is many slow syscalls.
_LAUNCH = (
    "import runpy, sys; sys.modules['ssl'] = None; sys.path.insert(0, {mount!r}); "
    "runpy.run_module('agent', run_name='__main__', alter_sys=True)"
)


def agent_argv(
    python: str = "/usr/bin/python3",
    mount: str = AGENT_MOUNT,
    run_dir: str = RUN_DIR,
) -> list[str]:
    """argv that starts the agent from ``{mount}/agent``, serving ``{run_dir}/agent.sock``."""
    return [
        python,
        "-I",  # isolated: no PYTHON* env vars, no user site, no cwd on sys.path
        "-S",  # no site module: the agent needs nothing from site-packages
        "-B",  # the agent mount is read-only
        "-c",
        _LAUNCH.format(mount=mount),
        "--socket",
        f"{run_dir}/{SOCKET_NAME}",
        "--log",
        f"{run_dir}/{LOG_NAME}",
    ]


def package_dir() -> Path:
    """Host path of the agent package (the directory to mount at ``{AGENT_MOUNT}/agent``)."""
    return Path(__file__).resolve().parent
