"""How a runtime starts the agent inside a sandbox.

The agent package directory is mounted read-only at ``{AGENT_MOUNT}/agent``
and a host-visible, writable directory at :data:`RUN_DIR` receives the agent's
unix socket and log. The agent runs as the sandbox's init (PID 1).

Runtimes start it on a bundled interpreter mounted read-only at
:data:`RUNTIME_MOUNT` (``atelier.images.agent_runtime``), never on the image's
own Python: ``agent_argv(python=bundled_python())``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "AGENT_MOUNT",
    "LOG_NAME",
    "RELEASED_NAME",
    "RUNTIME_MOUNT",
    "RUN_DIR",
    "SOCKET_NAME",
    "agent_argv",
    "bundled_python",
    "package_dir",
]

AGENT_MOUNT = "/.atelier"
RUN_DIR = "/run/atelier"
SOCKET_NAME = "agent.sock"
# Written by the agent once it released its socket (SIGUSR1), see server.py.
RELEASED_NAME = "agent.released"
LOG_NAME = "agent.log"
RUNTIME_MOUNT = f"{AGENT_MOUNT}/runtime"

# ``sys.modules['ssl'] = None``: asyncio imports ssl only opportunistically and
# the agent never speaks TLS; skipping it (and ``site``, via -S) takes about a
# third off the agent's start under gVisor's ptrace platform, where every
# import is many slow syscalls.
_LAUNCH = (
    "import runpy, sys; sys.modules['ssl'] = None; sys.path.insert(0, {mount!r}); "
    "runpy.run_module('agent', run_name='__main__', alter_sys=True)"
)


def bundled_python(
    root: str = RUNTIME_MOUNT,
    loader: str = "ld-linux-x86-64.so.2",
    python: str = "python3.11",
) -> list[str]:
    """argv prefix that runs the bundled interpreter at ``root`` through its own
    dynamic loader and libraries (none of the image's are used)."""
    return [f"{root}/bin/{loader}", "--library-path", f"{root}/lib", f"{root}/bin/{python}"]


def agent_argv(
    python: str | Sequence[str] = "/usr/bin/python3",
    mount: str = AGENT_MOUNT,
    run_dir: str = RUN_DIR,
) -> list[str]:
    """argv that starts the agent from ``{mount}/agent``, serving ``{run_dir}/agent.sock``.

    ``python`` is an interpreter path, or an argv prefix such as
    :func:`bundled_python`'s.
    """
    return [
        *([python] if isinstance(python, str) else python),
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
