"""Copy a host directory tree into a running sandbox through its agent.

The tree is streamed as a tar archive (the host's ``tar``, which keeps modes,
symlinks and the ``.git`` directory) into ``tar -x`` inside the sandbox, over
the command's stdin: no temporary archive on either side, and any image with
a ``tar`` works, whatever its libc.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from pathlib import Path

from ...errors import WorkspaceSetupFailed
from ..agent_client import AgentClient

__all__ = ["copy_tree_into"]

_CHUNK = 256 * 1024


async def copy_tree_into(
    agent: AgentClient, source: Path, destination: str, *, owner: str | None = None
) -> None:
    """Copy the contents of ``source`` into ``destination`` (created if missing)
    in the sandbox, owned by ``owner`` (and their primary group) -- by default
    the user commands run as when a request names nobody."""
    dest = shlex.quote(destination)
    # no owner: the agent's default user ("user" if the image has one, else root)
    script = (
        f"mkdir -p {dest} && tar -x -f - -C {dest} && owner=$1 && "
        '{ [ -n "$owner" ] || ! id user >/dev/null 2>&1 || owner=user; } && '
        f'{{ [ -z "$owner" ] || chown -R "$owner": {dest}; }}'
    )
    producer = await asyncio.create_subprocess_exec(
        "tar", "-c", "-f", "-", "-C", str(source), ".",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert producer.stdout is not None and producer.stderr is not None
    session = await agent.exec(
        argv=["sh", "-c", script, "sh", owner or ""], user="root", stdin=True, timeout=None
    )
    try:
        while chunk := await producer.stdout.read(_CHUNK):
            await session.send_stdin(chunk)
        await session.close_stdin()
        result = await session.collect()
    finally:
        await session.detach()
        if producer.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                producer.kill()
        host_err = (await producer.stderr.read()).decode(errors="replace").strip()
        await producer.wait()
    if producer.returncode != 0:
        raise WorkspaceSetupFailed(
            f"could not archive the working tree on the host: {host_err}",
            details={"step": "copy"},
        )
    if result.exit_code != 0:
        output = (result.stderr or result.stdout).decode(errors="replace").strip()[-2000:]
        hint = " (does the image have tar?)" if "not found" in output else ""
        raise WorkspaceSetupFailed(
            f"could not unpack the working tree into {destination}{hint}: {output}",
            details={"step": "copy", "exit_code": result.exit_code, "output": output},
        )
