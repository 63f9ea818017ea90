"""Pause and resume through the sandbox's cgroup v1 freezer.

``runsc pause``/``resume`` cost ~100 ms each here (a Go binary started under
load, talking to the sandbox over its control socket); writing ``FROZEN`` /
``THAWED`` into the sandbox's ``freezer.state`` costs well under a
millisecond and freezes the same processes (runsc puts the sandbox and its
ptrace stubs in ``/atelier/<id>``). runsc does not know about such a pause:
its ``state`` still says "running" -- and hangs, asking the frozen sandbox --
so the runtime reads the freezer first (:func:`is_frozen`) and reports
PAUSED without asking runsc. Where the freezer is missing (cgroup
v2 hosts, or a sandbox whose cgroup runsc did not make) the runtime falls
back to runsc, and so does a pause whose freeze does not complete within a
second (see :func:`freeze`). Numbers: docs/hibernate.md.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ...errors import RuntimeFailure
from . import oci

__all__ = [
    "FREEZER_ROOT",
    "available",
    "freeze",
    "has_tasks",
    "is_frozen",
    "state_file",
    "thaw",
]

FREEZER_ROOT = Path("/sys/fs/cgroup/freezer")


def state_file(sandbox_id: str, root: Path = FREEZER_ROOT) -> Path:
    return root / oci.cgroups_path(sandbox_id).strip("/") / "freezer.state"


def available(sandbox_id: str, root: Path = FREEZER_ROOT) -> bool:
    return state_file(sandbox_id, root).is_file()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def has_tasks(sandbox_id: str, root: Path = FREEZER_ROOT) -> bool:
    """Whether any process is in the sandbox's freezer cgroup."""
    return bool(_read(state_file(sandbox_id, root).with_name("cgroup.procs")))


def is_frozen(sandbox_id: str, root: Path = FREEZER_ROOT) -> bool:
    """Whether the sandbox's cgroup is frozen (or freezing)."""
    return _read(state_file(sandbox_id, root)) in ("FROZEN", "FREEZING")


async def freeze(sandbox_id: str, root: Path = FREEZER_ROOT, timeout: float = 1.0) -> None:
    """Freeze every process of the sandbox; return once all are frozen.

    Raises RuntimeFailure (with the cgroup thawed again) if they are not
    within ``timeout``: under runsc's ptrace platform a task caught in a
    ptrace stop can keep the cgroup FREEZING (seen right after a start)."""
    path = state_file(sandbox_id, root)
    try:
        path.write_text("FROZEN")
    except OSError as exc:
        raise RuntimeFailure(f"cannot freeze sandbox {sandbox_id}: {exc}") from exc
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while _read(path) != "FROZEN":
        if time.monotonic() > deadline:
            await thaw(sandbox_id, root)
            raise RuntimeFailure(f"sandbox {sandbox_id} did not freeze within {timeout:g}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def thaw(sandbox_id: str, root: Path = FREEZER_ROOT) -> None:
    path = state_file(sandbox_id, root)
    try:
        path.write_text("THAWED")
    except FileNotFoundError:
        return  # the cgroup is gone: nothing is frozen
    except OSError as exc:
        raise RuntimeFailure(f"cannot thaw sandbox {sandbox_id}: {exc}") from exc
