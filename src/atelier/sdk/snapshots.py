"""``Snapshots`` / ``AsyncSnapshots``: the caller's saved sandboxes.

::

    from atelier.sdk import Sandbox, Snapshots

    snap = sb.snapshot("deps-installed")            # files (and memory) of sb
    clone = Sandbox.create(snapshot="deps-installed")
    with Snapshots() as snapshots:
        for s in snapshots.list():
            print(s.name, s.size_bytes)
        snapshots.delete("deps-installed")          # SnapshotInUse while clones exist

A snapshot is taken with :meth:`atelier.sdk.Sandbox.snapshot`; see docs/lifecycle.md.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from urllib.parse import quote

import httpx

from atelier.sdk._base import Call, Params, parse_none
from atelier.sdk._client import ApiClient, AsyncApiClient
from atelier.sdk.models import SnapshotInfo

__all__ = ["AsyncSnapshots", "Snapshots"]


def _path(ref: str) -> str:
    return f"/v1/snapshots/{quote(ref, safe='')}"


def _list_call(labels: Mapping[str, str] | None) -> Call[list[SnapshotInfo]]:
    def parse(response: httpx.Response) -> list[SnapshotInfo]:
        return [SnapshotInfo.from_json(s) for s in response.json()["snapshots"]]

    params: Params = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
    return Call("GET", "/v1/snapshots", parse, params=params)


def _get_call(ref: str) -> Call[SnapshotInfo]:
    return Call("GET", _path(ref), lambda r: SnapshotInfo.from_json(r.json()))


def _delete_call(ref: str) -> Call[None]:
    return Call("DELETE", _path(ref), parse_none)


class Snapshots(ApiClient):
    """List, inspect and delete snapshots (by id or name)."""

    def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SnapshotInfo]:
        return self._http.call(_list_call(labels))

    def get(self, ref: str) -> SnapshotInfo:
        """``SnapshotNotFound`` if there is none."""
        return self._http.call(_get_call(ref))

    def delete(self, ref: str) -> None:
        """``SnapshotInUse`` (``details["users"]``) while sandboxes or snapshots use it."""
        self._http.call(_delete_call(ref))


class AsyncSnapshots(AsyncApiClient):
    """The async :class:`Snapshots`."""

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SnapshotInfo]:
        return await self._http.call(_list_call(labels))

    async def get(self, ref: str) -> SnapshotInfo:
        return await self._http.call(_get_call(ref))

    async def delete(self, ref: str) -> None:
        await self._http.call(_delete_call(ref))
