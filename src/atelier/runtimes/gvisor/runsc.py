"""A thin async wrapper around the ``runsc`` command line.

Every subcommand gets the same global flags (root, platform, network, host
UDS, overlay, ...): runsc re-reads its configuration from the command line
on every call, and ``start`` behaves differently from ``create`` if they
disagree. The one per-call exception is ``--network``: a sandbox with a
network namespace gets ``--network=sandbox`` on its ``create`` and ``start``
(the only subcommands that read it).

A sandbox with a network: runsc 20221219 sets up gVisor's netstack at
``start``, from inside the sandbox's namespace, and first refuses to run "in
the root network namespace", which it decides by the existence of
``/proc/sys/net/core/rmem_default`` -- present in *every* namespace on newer
kernels. So ``start`` runs in a private mount namespace where a tiny empty
tmpfs covers the sandbox namespace's ``/proc/sys/net/core`` (mounted from
inside that namespace: ``/proc/sys/net`` is per network namespace), see
:func:`netns_start_argv`. runsc itself stays in the root network namespace:
its control socket is an abstract unix socket bound by ``create``, reachable
only from the namespace that bound it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ...errors import RuntimeFailure
from .proc import CommandResult, run_command

__all__ = [
    "CID_SUFFIX",
    "ContainerState",
    "Runsc",
    "console_open",
    "container_id",
    "netns_start_argv",
    "sandbox_id_of",
]

# runsc resolves a container id given on its command line as a *prefix*:
# ``runsc state a`` answers for container ``ab`` if there is no ``a``, and
# errors out as "ambiguous" for ``a`` if ``ab`` exists too. So no container id
# may be a prefix of another: each ends in a character sandbox ids never
# contain (sandbox ids are [A-Za-z0-9_.-]; runsc allows [\w+.-]).
CID_SUFFIX = "+"


def container_id(sandbox_id: str) -> str:
    return sandbox_id + CID_SUFFIX


def sandbox_id_of(cid: str) -> str | None:
    """The sandbox id of a container id of ours, None for a foreign one."""
    if cid.endswith(CID_SUFFIX) and CID_SUFFIX not in cid[:-1]:
        return cid[: -len(CID_SUFFIX)]
    return None


# Run as: sh -c SCRIPT sh <netns path> <argv...>
_NETNS_SCRIPT = (
    'nsenter --net="$1" mount -t tmpfs -o size=4k,mode=0555,nosuid,nodev,noexec '
    'atelier-netcore /proc/sys/net/core && shift && exec "$@"'
)


def netns_start_argv(netns: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` (a ``runsc start``) wrapped so that runsc accepts the sandbox's
    network namespace (see the module docstring). The mount namespace is
    private and dies with the command; nothing outside sees the tmpfs."""
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", _NETNS_SCRIPT, "sh", str(netns), *argv,
    ]  # fmt: skip


_STATE_FILE = re.compile(r"[\w.+-]+_sandbox:[\w.+-]+\.state")
_LOCK_FILE = re.compile(r"[\w.+-]+_sandbox:[\w.+-]+\.lock")
# Substrings of runsc's error output meaning "no such container".
_MISSING = ("does not exist", "no such file or directory", "not found")


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    status: str  # created | running | paused | stopped
    pid: int
    bundle: str


class Runsc:
    """runsc bound to one state root and one set of global flags."""

    def __init__(
        self,
        binary: str,
        root: Path,
        platform: str,
        *,
        network: str = "none",
        default_log: Path | None = None,
        extra_flags: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.root = root
        self.platform = platform
        self.network = network
        self.default_log = default_log
        self.extra_flags = tuple(extra_flags)

    def global_flags(self, log: Path | None = None, network: str | None = None) -> list[str]:
        flags = [
            f"--root={self.root}",
            f"--platform={self.platform}",
            f"--network={network or self.network}",
            # The agent binds its socket in a bind-mounted host directory.
            "--host-uds=create",
            # Root writes go to our overlay (the disk layer), never to memory.
            "--overlay2=none",
            # The sandbox sees as many CPUs as its quota allows.
            "--cpu-num-from-quota",
            "--log-format=text",
        ]
        log = log or self.default_log
        if log is not None:
            flags.append(f"--log={log}")
        flags.extend(self.extra_flags)
        return flags

    def argv(self, *args: str, log: Path | None = None, network: str | None = None) -> list[str]:
        return [self.binary, *self.global_flags(log, network), *args]

    async def run(
        self,
        *args: str,
        log: Path | None = None,
        timeout: float = 30.0,
        check: bool = True,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        input: bytes | None = None,
        network: str | None = None,
        netns: Path | None = None,
    ) -> CommandResult:
        argv = self.argv(*args, log=log, network=network)
        if netns is not None:
            argv = netns_start_argv(netns, argv)
        return await run_command(
            argv,
            timeout=timeout,
            check=check,
            stdout=stdout,
            stderr=stderr,
            input=input,
        )

    # -- queries ----------------------------------------------------------------
    async def version(self) -> str:
        res = await run_command([self.binary, "--version"], timeout=10)
        return res.stdout.splitlines()[0].strip() if res.stdout else ""

    def might_exist(self, cid: str) -> bool:
        """False only when runsc's root surely has no container ``cid``.

        A cheap hint (``runsc state`` costs ~30 ms) from runsc's state files,
        ``<cid>_sandbox:<sandbox id>.state``; when the root holds anything
        else (another runsc layout) it answers True, so the caller asks runsc.
        """
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        for name in names:
            if not _STATE_FILE.fullmatch(name):
                if not _LOCK_FILE.fullmatch(name):
                    return True
            elif name.startswith(f"{cid}_sandbox:"):
                return True
        return False

    def container_ids(self) -> list[str]:
        """Ids of the containers runsc has state files for, read from its root
        without asking any sandbox (``runsc list`` hangs while one of them is
        frozen by the cgroup freezer, see freezer.py)."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        return sorted(
            name.split("_sandbox:", 1)[0] for name in names if _STATE_FILE.fullmatch(name)
        )

    def forget(self, cid: str, *, stale: bool = False) -> None:
        """Remove the lock file runsc leaves behind for a deleted container;
        with ``stale``, its state file too (only for a container from before
        a reboot: no process of it can exist any more)."""
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(self.root / f"{cid}_sandbox:{cid}.state")
        if not self.might_exist(cid):
            with contextlib.suppress(OSError):
                os.unlink(self.root / f"{cid}_sandbox:{cid}.lock")

    async def state(self, cid: str, *, log: Path | None = None) -> ContainerState | None:
        """The container's state, or ``None`` if runsc has no such container."""
        if not self.might_exist(cid):
            return None
        res = await self.run("state", cid, log=log, timeout=15, check=False)
        if not res.ok:
            if any(m in res.stderr.lower() for m in _MISSING):
                return None
            raise RuntimeFailure(
                f"runsc state {cid}: {res.describe()}", details={"stderr": res.stderr}
            )
        return _parse_state(res.stdout)

    async def list(self) -> list[ContainerState]:
        res = await self.run("list", "--format=json", timeout=15)
        text = res.stdout.strip()
        if not text or text == "null":
            return []
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RuntimeFailure(f"runsc list printed invalid JSON: {text[:200]!r}") from exc
        return [_state_from(item) for item in items or []]

    # -- lifecycle ----------------------------------------------------------------
    async def create(
        self,
        cid: str,
        bundle: Path,
        *,
        console: IO[Any],
        log: Path | None = None,
        user_log: Path | None = None,
        timeout: float = 60.0,
        network: str | None = None,
    ) -> CommandResult:
        """``runsc create``. The container's stdout/stderr (and runsc's own
        error output, which shares them) go to ``console``. ``network``
        overrides ``--network`` (``sandbox`` for a sandbox with a namespace)."""
        args = ["create", f"--bundle={bundle}"]
        if user_log is not None:
            args.append(f"--user-log={user_log}")
        args.append(cid)
        return await self.run(
            *args,
            log=log,
            timeout=timeout,
            check=False,
            stdout=console,
            stderr=console,
            network=network,
        )

    async def start(self, cid: str, *, log: Path | None = None, netns: Path | None = None) -> None:
        """``runsc start``; with ``netns`` (the sandbox's network namespace, also
        named in its OCI spec) gVisor's netstack takes over its interfaces."""
        if netns is None:
            await self.run("start", cid, log=log, timeout=30)
        else:
            await self.run("start", cid, log=log, timeout=30, network="sandbox", netns=netns)

    async def kill(
        self, cid: str, signal: str = "KILL", *, log: Path | None = None, check: bool = True
    ) -> CommandResult:
        return await self.run("kill", cid, signal, log=log, timeout=15, check=check)

    async def delete(
        self, cid: str, *, force: bool = False, log: Path | None = None, check: bool = True
    ) -> CommandResult:
        args = ["delete", "--force", cid] if force else ["delete", cid]
        return await self.run(*args, log=log, timeout=60, check=check)

    async def pause(self, cid: str, *, log: Path | None = None) -> None:
        await self.run("pause", cid, log=log, timeout=30)

    async def resume(self, cid: str, *, log: Path | None = None) -> None:
        await self.run("resume", cid, log=log, timeout=30)

    async def exec(
        self,
        cid: str,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        timeout: float = 60.0,
        input: bytes | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run ``argv`` inside the container (for tests and diagnostics; the
        agent is the real way in)."""
        return await self.run(
            "exec", cid, *argv, log=log, timeout=timeout, check=check, input=input
        )


def _state_from(item: Any) -> ContainerState:
    if not isinstance(item, dict):
        raise RuntimeFailure(f"unexpected runsc state entry: {item!r}")
    return ContainerState(
        id=str(item.get("id", "")),
        status=str(item.get("status", "")),
        pid=int(item.get("pid") or 0),
        bundle=str(item.get("bundle", "")),
    )


def _parse_state(text: str) -> ContainerState:
    try:
        return _state_from(json.loads(text))
    except json.JSONDecodeError as exc:
        raise RuntimeFailure(f"runsc state printed invalid JSON: {text[:200]!r}") from exc


def console_open(path: Path) -> IO[bytes]:
    """Open a console log for appending.

    ``O_APPEND`` matters: the sandbox writes the file through its own file
    offset (positional writes), which would overwrite earlier runs otherwise.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    return os.fdopen(fd, "ab", buffering=0)
