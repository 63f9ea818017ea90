"""Template jobs run as operations, the in-use check and version collection."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import PurePosixPath
from typing import Any

from ..config import Settings
from ..core.auth import Principal
from ..errors import InvalidRequest, TemplateInUse
from ..images.debootstrap import ProgressEvent
from ..images.oci import pull_template, remove_image_tag
from ..images.registry_config import parse_reference
from ..images.skopeo import parse_credentials
from ..images.store import TemplateStore, read_manifest, validate_name
from ..store.repository import Repository
from .manager import Operation, OperationLog, OperationManager
from .upload import extract_context, receive_upload

__all__ = ["BUILD_KIND", "PULL_KIND", "TemplateOperations"]

log = logging.getLogger("atelier.operations")
BUILD_KIND = "template.build"
PULL_KIND = "template.pull"


def _progress_line(event: ProgressEvent) -> str:
    count = f" ({event.done}/{event.total})" if event.total else ""
    return f"{event.phase}: {event.message}{count}"


class TemplateOperations:
    """What the template routes do: delete with the in-use check, pull and build
    as operations, and garbage collection of unused versions."""

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        store: TemplateStore,
        operations: OperationManager,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.store = store
        self.operations = operations

    # -- in use, collection, delete ------------------------------------------------
    async def usage(self, name: str) -> tuple[list[str], set[int] | None]:
        """(sandboxes using ``name``, the versions they pin; None = unknown)."""
        return await self.repo.template_usage(name)

    async def collect(self, name: str) -> list[int]:
        """Delete the versions of ``name`` no sandbox uses (but the current one)."""
        _ids, keep = await self.usage(name)
        return await asyncio.to_thread(self.store.collect_garbage, name, keep)

    async def collect_all(self) -> None:
        """Collect every template's unused versions (at start-up)."""
        for info in await asyncio.to_thread(self.store.list):
            try:
                removed = await self.collect(info.name)
            except Exception as exc:  # never fatal: the next publish retries
                log.warning("collecting unused versions of %s failed: %s", info.name, exc)
                continue
            if removed:
                log.info("removed unused versions %s of template %s", removed, info.name)

    async def delete(self, name: str) -> None:
        """Delete every version of ``name``; TemplateInUse while a sandbox uses it."""
        info = self.store.get(name)  # TemplateNotFound
        ids, _versions = await self.usage(name)
        if ids or self.store.leased(name):
            what = ", ".join(ids) if ids else "a sandbox being created"
            raise TemplateInUse(
                f"template {name!r} is used by {len(ids) or 1} sandbox(es): {what}; "
                "delete them first",
                details={"template": name, "sandbox_ids": ids},
            )
        was_oci = (read_manifest(info.rootfs.parent) or {}).get("builder") == "oci"
        await asyncio.to_thread(self.store.remove, name)
        if was_oci:
            await asyncio.to_thread(remove_image_tag, self.settings, name)

    # -- pull ------------------------------------------------------------------------
    async def pull(
        self,
        principal: Principal,
        name: str,
        image: str,
        *,
        credentials: str | None = None,
        force: bool = False,
    ) -> Operation:
        principal.require_admin()
        validate_name(name)
        parse_reference(image)  # a malformed reference is a 400 now, not a failed operation
        parse_credentials(credentials)

        async def job(oplog: OperationLog) -> dict[str, Any]:
            oplog.write(f"pulling {image} into template {name!r}")
            info = await asyncio.to_thread(
                pull_template,
                self.settings,
                name,
                image,
                credentials=credentials,
                force=force,
                on_progress=lambda event: oplog.write(_progress_line(event)),
            )
            return await self._published(oplog, name, info.version)

        return await self.operations.start(PULL_KIND, name, principal.token_id, job)

    # -- build -----------------------------------------------------------------------
    async def build(
        self,
        principal: Principal,
        name: str,
        body: AsyncIterator[bytes],
        *,
        dockerfile: str = "Dockerfile",
        build_args: Mapping[str, str] | None = None,
        target: str | None = None,
        no_cache: bool = False,
    ) -> Operation:
        """Receive and unpack the context (400s happen here), then build as an operation."""
        principal.require_admin()
        validate_name(name)
        relative = _relative_dockerfile(dockerfile)
        op_id = self.operations.new_id()
        work = self.operations.work_dir(op_id)
        work.mkdir(parents=True, mode=0o700)
        context = work / "context"
        try:
            archive = work / "context.tar"
            await receive_upload(body, archive)
            context.mkdir(mode=0o755)
            await asyncio.to_thread(extract_context, archive, context)
            archive.unlink()
            if not (context / relative).is_file():
                raise InvalidRequest(
                    f"no Dockerfile {dockerfile!r} in the build context",
                    details={"dockerfile": dockerfile},
                )
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        args = dict(build_args or {})

        async def job(oplog: OperationLog) -> dict[str, Any]:
            from ..images.dockerfile import build_dockerfile  # the gVisor runtime: on use

            oplog.write(f"building template {name!r} from {dockerfile}")
            info = await build_dockerfile(
                self.settings,
                name,
                context=context,
                dockerfile=context / relative,
                build_args=args,
                target=target,
                no_cache=no_cache,
                on_log=oplog.write,
            )
            return await self._published(oplog, name, info.version)

        async def cleanup() -> None:
            await asyncio.to_thread(shutil.rmtree, work, True)

        return await self.operations.start(
            BUILD_KIND, name, principal.token_id, job, op_id=op_id, cleanup=cleanup
        )

    async def _published(self, oplog: OperationLog, name: str, version: int) -> dict[str, Any]:
        try:
            removed = await self.collect(name)
        except Exception as exc:  # the template is ready either way
            oplog.write(f"warning: could not remove unused versions: {exc}")
            removed = []
        if removed:
            oplog.write(f"removed unused versions: {', '.join(map(str, removed))}")
        oplog.write(f"template {name!r} version {version} is current")
        return {"template": name, "version": version}


def _relative_dockerfile(path: str) -> PurePosixPath:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/") or not parts or ".." in parts:
        raise InvalidRequest(
            f"dockerfile {path!r}: give a path inside the build context",
            details={"dockerfile": path},
        )
    return PurePosixPath(*parts)
