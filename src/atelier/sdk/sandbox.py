"""``Sandbox`` (sync) and ``AsyncSandbox``: the entry points of the SDK.

::

    from atelier import Sandbox

    with Sandbox.create(template="base") as sb:        # deleted on exit
        print(sb.commands.run("python3 -c 'print(6*7)'").stdout)
        sb.files.write("/home/user/a.txt", "hello")

Configuration: ``api_url`` (default ``$ATELIER_URL`` or ``http://127.0.0.1:8080``)
and ``token`` (default ``$ATELIER_TOKEN``; missing → ``AuthenticationError``
before any request). ``transport`` injects an ``httpx`` transport (tests).
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from atelier.errors import AtelierError, InvalidRequest, SandboxNotFound
from atelier.sdk import _api as api
from atelier.sdk._base import DEFAULT_REQUEST_TIMEOUT, Call, ConnectionConfig
from atelier.sdk._http import AsyncHttp, SyncHttp
from atelier.sdk.code import (
    AsyncCodeInterpreter,
    CodeInterpreter,
    ErrorHandler,
    Execution,
    ResultHandler,
    TextHandler,
)
from atelier.sdk.commands import AsyncCommands, Commands
from atelier.sdk.files import AsyncFiles, Files
from atelier.sdk.git import AsyncGit, Git
from atelier.sdk.models import AutoStop, GitAuth, SandboxInfo, SandboxState, SnapshotInfo
from atelier.sdk.ports import AsyncPorts, Ports
from atelier.sdk.pty import AsyncPty, Pty

__all__ = ["AsyncSandbox", "Sandbox"]


WORKSPACE_REQUEST_TIMEOUT = 1800.0


def _create_call(
    template: str,
    repo: str | None,
    ref: str | None,
    devcontainer: str | None,
    git_auth: GitAuth | None,
    git_secret: str | None,
    depth: int | None,
    local_env: Mapping[str, str] | None,
    runtime: str | None,
    vcpus: int,
    memory_mib: int,
    disk_mib: int,
    env: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
    timeout: int | None,
    network: Mapping[str, Any] | None,
    prebuild: bool = True,
    snapshot: str | None = None,
    auto_stop: AutoStop | None = None,
) -> Call[SandboxInfo]:
    if repo is None:
        if any(x is not None for x in (ref, devcontainer, git_auth, git_secret)):
            raise InvalidRequest("ref, devcontainer, git_auth and git_secret need repo=")
        return api.create_sandbox(
            template=template, runtime=runtime, vcpus=vcpus, memory_mib=memory_mib,
            disk_mib=disk_mib, env=env, labels=labels, timeout=timeout, network=network,
            snapshot=snapshot, auto_stop=auto_stop, defaults=_SHAPE_DEFAULTS,
        )  # fmt: skip
    if snapshot is not None:
        raise InvalidRequest("snapshot= and repo= cannot be combined")
    return api.create_workspace(
        repo=repo, ref=ref, devcontainer=devcontainer, depth=depth, credentials=git_auth,
        secret=git_secret,
        local_env=local_env, runtime=runtime, vcpus=vcpus, memory_mib=memory_mib,
        disk_mib=disk_mib, env=env, labels=labels, timeout=timeout, network=network,
        prebuild=prebuild, auto_stop=auto_stop,
    )  # fmt: skip


# left at these, a sandbox made from a snapshot takes the snapshot's instead
_SHAPE_DEFAULTS = {"vcpus": 1, "memory_mib": 512, "disk_mib": 2048}


def _deleted(info: SandboxInfo) -> SandboxInfo:
    return dataclasses.replace(info, state=SandboxState.DELETED.value)


class Sandbox:
    """A sandbox, with ``commands``, ``files`` and ``pty`` hanging off it."""

    def __init__(self, info: SandboxInfo, http: SyncHttp) -> None:
        self._http = http
        self._info = info
        self.commands = Commands(http, info.id)
        self.files = Files(http, info.id)
        self.pty = Pty(http.config, info.id)
        self.ports = Ports(http, info.id)
        self.git = Git(http, self.commands, info)
        self.code = CodeInterpreter(http, info.id)  # contexts; run_code is the shortcut

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, state={self._info.state!r})"

    @staticmethod
    def _open_http(
        api_url: str | None,
        token: str | None,
        request_timeout: float | None,
        transport: httpx.BaseTransport | None,
    ) -> SyncHttp:
        return SyncHttp(ConnectionConfig.resolve(api_url, token, request_timeout), transport)

    @classmethod
    def create(
        cls,
        template: str = "base",
        *,
        timeout: int | None = 300,
        vcpus: int = 1,
        memory_mib: int = 512,
        disk_mib: int = 2048,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        runtime: str | None = None,
        network: Mapping[str, Any] | None = None,
        repo: str | None = None,
        ref: str | None = None,
        devcontainer: str | None = None,
        git_auth: GitAuth | None = None,
        git_secret: str | None = None,
        depth: int | None = 1,
        local_env: Mapping[str, str] | None = None,
        prebuild: bool = True,
        snapshot: str | None = None,
        auto_stop: AutoStop | None = None,
        api_url: str | None = None,
        token: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> Self:
        """Create and start a sandbox; ``timeout`` seconds until it is stopped (None = never).

        With ``repo`` it is a workspace: the server clones ``repo`` at ``ref``
        (with ``git_auth``, or the stored secret ``git_secret``, or else your
        stored secret for the repository's host: :class:`~atelier.sdk.Secrets`),
        uses its ``devcontainer.json`` (``devcontainer`` picks one of several)
        for the image, resources,
        environment and lifecycle commands, and returns once the commands up to
        ``waitFor`` ran; ``template`` is then ignored. A ready prebuild of the
        branch is started from unless ``prebuild=False`` (docs/prebuilds.md).
        ``request_timeout``
        defaults to 30 minutes for this call (an image may be pulled or built).

        With ``snapshot`` (an id or name) it starts from that snapshot: its
        template, files and (if saved) running processes; vcpus, memory and
        disk left at their defaults are the snapshot's. ``auto_stop`` is the
        idle policy (default: the server's): see :class:`~atelier.sdk.AutoStop`.
        """
        if repo is not None and request_timeout == DEFAULT_REQUEST_TIMEOUT:
            request_timeout = WORKSPACE_REQUEST_TIMEOUT
        http = cls._open_http(api_url, token, request_timeout, transport)
        call = _create_call(
            template, repo, ref, devcontainer, git_auth, git_secret, depth, local_env,
            runtime, vcpus, memory_mib, disk_mib, env, labels, timeout, network, prebuild,
            snapshot, auto_stop,
        )  # fmt: skip
        try:
            return cls(http.call(call), http)
        except BaseException:
            http.close()
            raise

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        api_url: str | None = None,
        token: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> Self:
        """Attach to an existing sandbox (``SandboxNotFound`` if there is none)."""
        http = cls._open_http(api_url, token, request_timeout, transport)
        try:
            return cls(http.call(api.get_sandbox(sandbox_id)), http)
        except BaseException:
            http.close()
            raise

    @classmethod
    def list(
        cls,
        state: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        api_url: str | None = None,
        token: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Sandboxes visible to the token, filtered by state and labels."""
        http = cls._open_http(api_url, token, request_timeout, transport)
        try:
            return http.call(api.list_sandboxes(state, labels))
        finally:
            http.close()

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def info(self) -> SandboxInfo:
        """The last known state (refresh with :meth:`get_info`)."""
        return self._info

    def get_info(self) -> SandboxInfo:
        self._info = self._http.call(api.get_sandbox(self.id))
        return self._info

    def is_running(self) -> bool:
        return self.get_info().state == SandboxState.RUNNING

    def stop(self) -> SandboxInfo:
        self._info = self._http.call(api.stop_sandbox(self.id))
        return self._info

    def pause(self) -> SandboxInfo:
        """Freeze every process, keeping memory; :meth:`resume` thaws them."""
        self._info = self._http.call(api.pause_sandbox(self.id))
        return self._info

    def resume(self) -> SandboxInfo:
        self._info = self._http.call(api.resume_sandbox(self.id))
        return self._info

    def start(self) -> SandboxInfo:
        self._info = self._http.call(api.start_sandbox(self.id))
        return self._info

    def hibernate(self) -> SandboxInfo:
        """Save memory to disk and free the RAM; the next call that needs the
        sandbox (a command, a file...) wakes it, or :meth:`wake`."""
        self._info = self._http.call(api.hibernate_sandbox(self.id))
        return self._info

    def wake(self) -> SandboxInfo:
        """Bring a hibernated or paused sandbox back (its processes as they were)."""
        self._info = self._http.call(api.wake_sandbox(self.id))
        return self._info

    def set_auto_stop(self, policy: AutoStop | None) -> SandboxInfo:
        """Replace the idle policy (``None``: never stop by itself)."""
        self._info = self._http.call(api.set_auto_stop(self.id, policy))
        return self._info

    def snapshot(
        self,
        name: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        memory: bool | None = None,
    ) -> SnapshotInfo:
        """Save the sandbox's files (and memory: ``None`` = if the runtime can);
        it keeps running. Start sandboxes from it with ``create(snapshot=...)``."""
        return self._http.call(api.snapshot_sandbox(self.id, name, labels, memory))

    def fork(self, count: int = 1) -> builtins.list[Sandbox]:
        """``count`` copies of this sandbox (files and, where possible, running
        processes), each independent from then on; all or none are made."""
        infos = self._http.call(api.fork_sandbox(self.id, count))
        return [Sandbox(info, self._http.sibling()) for info in infos]

    def set_timeout(self, seconds: int | None) -> SandboxInfo:
        """Stop the sandbox ``seconds`` from now (``None``: never)."""
        self._info = self._http.call(api.set_timeout(self.id, seconds))
        return self._info

    def logs(self, tail: int | None = None) -> str:
        """The sandbox's runtime + agent log (last ``tail`` lines)."""
        return self._http.call(api.sandbox_logs(self.id, tail))

    def run_code(
        self,
        code: str,
        *,
        language: str = "python",
        context: str | None = None,
        timeout: float | None = 60.0,
        on_stdout: TextHandler | None = None,
        on_stderr: TextHandler | None = None,
        on_result: ResultHandler | None = None,
        on_error: ErrorHandler | None = None,
    ) -> Execution:
        """Run a cell in a stateful kernel (``python``, ``javascript``, ``bash``);
        see :mod:`atelier.sdk.code` (contexts: ``sandbox.code``)."""
        return self.code.run(
            code, language=language, context=context, timeout=timeout, on_stdout=on_stdout,
            on_stderr=on_stderr, on_result=on_result, on_error=on_error,
        )  # fmt: skip

    def record_event(self, kind: str, detail: Mapping[str, Any] | None = None) -> None:
        """Add an entry to the sandbox's audit trail (stored as ``client.<kind>``)."""
        self._http.call(api.record_event(self.id, kind, detail or {}))

    def kill(self) -> bool:
        """Delete the sandbox; ``False`` if it was already gone."""
        try:
            self._http.call(api.delete_sandbox(self.id))
        except SandboxNotFound:
            self._info = _deleted(self._info)
            return False
        self._info = _deleted(self._info)
        return True

    delete = kill

    def close(self) -> None:
        """Release the HTTP connection pool (the sandbox keeps running)."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.kill()
        except AtelierError:
            if exc is None:
                raise
        finally:
            self.close()


class AsyncSandbox:
    """The async mirror of :class:`Sandbox`."""

    def __init__(self, info: SandboxInfo, http: AsyncHttp) -> None:
        self._http = http
        self._info = info
        self.commands = AsyncCommands(http, info.id)
        self.files = AsyncFiles(http, info.id)
        self.pty = AsyncPty(http.config, info.id)
        self.ports = AsyncPorts(http, info.id)
        self.git = AsyncGit(http, self.commands, info)
        self.code = AsyncCodeInterpreter(http, info.id)

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, state={self._info.state!r})"

    @staticmethod
    def _open_http(
        api_url: str | None,
        token: str | None,
        request_timeout: float | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> AsyncHttp:
        return AsyncHttp(ConnectionConfig.resolve(api_url, token, request_timeout), transport)

    @classmethod
    async def create(
        cls,
        template: str = "base",
        *,
        timeout: int | None = 300,
        vcpus: int = 1,
        memory_mib: int = 512,
        disk_mib: int = 2048,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        runtime: str | None = None,
        network: Mapping[str, Any] | None = None,
        repo: str | None = None,
        ref: str | None = None,
        devcontainer: str | None = None,
        git_auth: GitAuth | None = None,
        git_secret: str | None = None,
        depth: int | None = 1,
        local_env: Mapping[str, str] | None = None,
        prebuild: bool = True,
        snapshot: str | None = None,
        auto_stop: AutoStop | None = None,
        api_url: str | None = None,
        token: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Self:
        """See :meth:`Sandbox.create`."""
        if repo is not None and request_timeout == DEFAULT_REQUEST_TIMEOUT:
            request_timeout = WORKSPACE_REQUEST_TIMEOUT
        http = cls._open_http(api_url, token, request_timeout, transport)
        call = _create_call(
            template, repo, ref, devcontainer, git_auth, git_secret, depth, local_env,
            runtime, vcpus, memory_mib, disk_mib, env, labels, timeout, network, prebuild,
            snapshot, auto_stop,
        )  # fmt: skip
        try:
            return cls(await http.call(call), http)
        except BaseException:
            await http.close()
            raise

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        api_url: str | None = None,
        token: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Self:
        http = cls._open_http(api_url, token, request_timeout, transport)
        try:
            return cls(await http.call(api.get_sandbox(sandbox_id)), http)
        except BaseException:
            await http.close()
            raise

    @classmethod
    async def list(
        cls,
        state: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        api_url: str | None = None,
        token: str | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> builtins.list[SandboxInfo]:
        http = cls._open_http(api_url, token, request_timeout, transport)
        try:
            return await http.call(api.list_sandboxes(state, labels))
        finally:
            await http.close()

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def info(self) -> SandboxInfo:
        return self._info

    async def get_info(self) -> SandboxInfo:
        self._info = await self._http.call(api.get_sandbox(self.id))
        return self._info

    async def is_running(self) -> bool:
        return (await self.get_info()).state == SandboxState.RUNNING

    async def stop(self) -> SandboxInfo:
        self._info = await self._http.call(api.stop_sandbox(self.id))
        return self._info

    async def pause(self) -> SandboxInfo:
        """Freeze every process, keeping memory; :meth:`resume` thaws them."""
        self._info = await self._http.call(api.pause_sandbox(self.id))
        return self._info

    async def resume(self) -> SandboxInfo:
        self._info = await self._http.call(api.resume_sandbox(self.id))
        return self._info

    async def start(self) -> SandboxInfo:
        self._info = await self._http.call(api.start_sandbox(self.id))
        return self._info

    async def hibernate(self) -> SandboxInfo:
        """See :meth:`Sandbox.hibernate`."""
        self._info = await self._http.call(api.hibernate_sandbox(self.id))
        return self._info

    async def wake(self) -> SandboxInfo:
        self._info = await self._http.call(api.wake_sandbox(self.id))
        return self._info

    async def set_auto_stop(self, policy: AutoStop | None) -> SandboxInfo:
        self._info = await self._http.call(api.set_auto_stop(self.id, policy))
        return self._info

    async def snapshot(
        self,
        name: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        memory: bool | None = None,
    ) -> SnapshotInfo:
        """See :meth:`Sandbox.snapshot`."""
        return await self._http.call(api.snapshot_sandbox(self.id, name, labels, memory))

    async def fork(self, count: int = 1) -> builtins.list[AsyncSandbox]:
        """See :meth:`Sandbox.fork`."""
        infos = await self._http.call(api.fork_sandbox(self.id, count))
        return [AsyncSandbox(info, self._http.sibling()) for info in infos]

    async def set_timeout(self, seconds: int | None) -> SandboxInfo:
        self._info = await self._http.call(api.set_timeout(self.id, seconds))
        return self._info

    async def logs(self, tail: int | None = None) -> str:
        return await self._http.call(api.sandbox_logs(self.id, tail))

    async def run_code(
        self,
        code: str,
        *,
        language: str = "python",
        context: str | None = None,
        timeout: float | None = 60.0,
        on_stdout: TextHandler | None = None,
        on_stderr: TextHandler | None = None,
        on_result: ResultHandler | None = None,
        on_error: ErrorHandler | None = None,
    ) -> Execution:
        """The async :meth:`Sandbox.run_code` (handlers may be coroutine functions)."""
        return await self.code.run(
            code, language=language, context=context, timeout=timeout, on_stdout=on_stdout,
            on_stderr=on_stderr, on_result=on_result, on_error=on_error,
        )  # fmt: skip

    async def record_event(self, kind: str, detail: Mapping[str, Any] | None = None) -> None:
        await self._http.call(api.record_event(self.id, kind, detail or {}))

    async def kill(self) -> bool:
        try:
            await self._http.call(api.delete_sandbox(self.id))
        except SandboxNotFound:
            self._info = _deleted(self._info)
            return False
        self._info = _deleted(self._info)
        return True

    delete = kill

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.kill()
        except AtelierError:
            if exc is None:
                raise
        finally:
            await self.close()
