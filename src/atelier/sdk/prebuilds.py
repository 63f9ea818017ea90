"""``Prebuilds`` / ``AsyncPrebuilds``: keep a repository's branch prebuilt.

::

    from atelier.sdk import Prebuilds

    with Prebuilds() as prebuilds:
        pb = prebuilds.add("https://git.example.com/team/app.git", "main",
                           webhook_provider="github", webhook_secret=os.environ["HOOK_SECRET"])
        print(pb.webhook_path)            # give the git host <server><webhook_path>
        build = prebuilds.run(pb.id)      # or build the branch's head now
        print(prebuilds.logs(pb.id, build.id))
    Sandbox.create(repo="https://git.example.com/team/app.git", ref="main")  # from it

See docs/prebuilds.md.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from atelier.sdk._base import Call, parse_none
from atelier.sdk._client import ApiClient, AsyncApiClient

__all__ = ["AsyncPrebuilds", "PrebuildBuildInfo", "PrebuildInfo", "Prebuilds"]


@dataclass(frozen=True)
class PrebuildBuildInfo:
    id: str
    prebuild_id: str
    commit: str
    state: str  # queued | running | ready | failed | expired
    trigger: str  # manual | poll | webhook:<provider>
    snapshot_id: str | None = None
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrebuildBuildInfo:
        return cls(
            id=str(data["id"]),
            prebuild_id=str(data["prebuild_id"]),
            commit=str(data["commit"]),
            state=str(data["state"]),
            trigger=str(data["trigger"]),
            snapshot_id=data.get("snapshot_id"),
            error=data.get("error"),
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            duration_seconds=data.get("duration_seconds"),
        )

    @property
    def done(self) -> bool:
        return self.state not in ("queued", "running")


@dataclass(frozen=True)
class PrebuildInfo:
    id: str
    repo: str
    branch: str
    devcontainer: str | None = None
    keep: int = 3
    webhook_provider: str | None = None
    webhook_path: str | None = None
    poll_interval: int | None = None
    env_secrets: dict[str, str] = field(default_factory=dict)
    latest_ready: PrebuildBuildInfo | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrebuildInfo:
        latest = data.get("latest_ready")
        return cls(
            id=str(data["id"]),
            repo=str(data["repo"]),
            branch=str(data["branch"]),
            devcontainer=data.get("devcontainer"),
            keep=int(data.get("keep", 3)),
            webhook_provider=data.get("webhook_provider"),
            webhook_path=data.get("webhook_path"),
            poll_interval=data.get("poll_interval"),
            env_secrets=dict(data.get("env_secrets") or {}),
            latest_ready=PrebuildBuildInfo.from_json(latest) if latest else None,
        )


def _path(prebuild_id: str, *rest: str) -> str:
    return "/".join(["/v1/prebuilds", quote(prebuild_id, safe=""), *rest])


def _add_call(repo: str, branch: str, options: dict[str, Any]) -> Call[PrebuildInfo]:
    body = {"repo": repo, "branch": branch, **{k: v for k, v in options.items() if v is not None}}
    return Call("POST", "/v1/prebuilds", lambda r: PrebuildInfo.from_json(r.json()), json=body)


def _list_call() -> Call[list[PrebuildInfo]]:
    return Call(
        "GET",
        "/v1/prebuilds",
        lambda r: [PrebuildInfo.from_json(p) for p in r.json()["prebuilds"]],
    )


def _get_call(prebuild_id: str) -> Call[PrebuildInfo]:
    return Call("GET", _path(prebuild_id), lambda r: PrebuildInfo.from_json(r.json()))


def _delete_call(prebuild_id: str) -> Call[None]:
    return Call("DELETE", _path(prebuild_id), parse_none)


def _builds_call(prebuild_id: str) -> Call[list[PrebuildBuildInfo]]:
    return Call(
        "GET",
        _path(prebuild_id, "builds"),
        lambda r: [PrebuildBuildInfo.from_json(b) for b in r.json()["builds"]],
    )


def _run_call(prebuild_id: str) -> Call[PrebuildBuildInfo]:
    return Call(
        "POST", _path(prebuild_id, "run"), lambda r: PrebuildBuildInfo.from_json(r.json()["build"])
    )


def _logs_call(prebuild_id: str, build_id: str) -> Call[str]:
    return Call(
        "GET",
        _path(prebuild_id, "builds", quote(build_id, safe=""), "logs"),
        lambda r: r.text,
        params=[("format", "text")],
    )


class Prebuilds(ApiClient):
    """The caller's prebuild configurations and their builds."""

    def add(
        self,
        repo: str,
        branch: str,
        *,
        devcontainer: str | None = None,
        git_secret: str | None = None,
        env_secrets: Mapping[str, str] | None = None,
        keep: int | None = None,
        webhook_provider: str | None = None,
        webhook_secret: str | None = None,
        poll_interval: int | None = None,
        runtime: str | None = None,
    ) -> PrebuildInfo:
        """Keep ``repo``'s ``branch`` prebuilt (nothing builds until a trigger)."""
        options = dict(
            devcontainer=devcontainer, git_secret=git_secret,
            env_secrets=dict(env_secrets) if env_secrets else None, keep=keep,
            webhook_provider=webhook_provider, webhook_secret=webhook_secret,
            poll_interval=poll_interval, runtime=runtime,
        )  # fmt: skip
        return self._http.call(_add_call(repo, branch, options))

    def list(self) -> builtins.list[PrebuildInfo]:
        return self._http.call(_list_call())

    def get(self, prebuild_id: str) -> PrebuildInfo:
        return self._http.call(_get_call(prebuild_id))

    def delete(self, prebuild_id: str) -> None:
        self._http.call(_delete_call(prebuild_id))

    def builds(self, prebuild_id: str) -> builtins.list[PrebuildBuildInfo]:
        """Newest first."""
        return self._http.call(_builds_call(prebuild_id))

    def run(self, prebuild_id: str) -> PrebuildBuildInfo:
        """Build the branch's head now (its existing build if it has one)."""
        return self._http.call(_run_call(prebuild_id))

    def logs(self, prebuild_id: str, build_id: str) -> str:
        return self._http.call(_logs_call(prebuild_id, build_id))


class AsyncPrebuilds(AsyncApiClient):
    """The async :class:`Prebuilds`."""

    async def add(
        self,
        repo: str,
        branch: str,
        *,
        devcontainer: str | None = None,
        git_secret: str | None = None,
        env_secrets: Mapping[str, str] | None = None,
        keep: int | None = None,
        webhook_provider: str | None = None,
        webhook_secret: str | None = None,
        poll_interval: int | None = None,
        runtime: str | None = None,
    ) -> PrebuildInfo:
        options = dict(
            devcontainer=devcontainer, git_secret=git_secret,
            env_secrets=dict(env_secrets) if env_secrets else None, keep=keep,
            webhook_provider=webhook_provider, webhook_secret=webhook_secret,
            poll_interval=poll_interval, runtime=runtime,
        )  # fmt: skip
        return await self._http.call(_add_call(repo, branch, options))

    async def list(self) -> builtins.list[PrebuildInfo]:
        return await self._http.call(_list_call())

    async def get(self, prebuild_id: str) -> PrebuildInfo:
        return await self._http.call(_get_call(prebuild_id))

    async def delete(self, prebuild_id: str) -> None:
        await self._http.call(_delete_call(prebuild_id))

    async def builds(self, prebuild_id: str) -> builtins.list[PrebuildBuildInfo]:
        return await self._http.call(_builds_call(prebuild_id))

    async def run(self, prebuild_id: str) -> PrebuildBuildInfo:
        return await self._http.call(_run_call(prebuild_id))

    async def logs(self, prebuild_id: str, build_id: str) -> str:
        return await self._http.call(_logs_call(prebuild_id, build_id))
