"""Operations: an asyncio task per job, its state in the database, its log in a file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..config import Settings
from ..core.auth import Principal
from ..errors import AtelierError, OperationNotFound, RuntimeFailure
from ..store.repository import Repository

__all__ = ["FOLLOW_POLL_SECONDS", "Job", "Operation", "OperationLog", "OperationManager"]

log = logging.getLogger("atelier.operations")
FOLLOW_POLL_SECONDS = 0.5  # a follower re-checks at least this often
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


@dataclass(frozen=True, slots=True)
class Operation:
    id: str
    kind: str
    target: str
    state: str
    owner: str | None
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Operation:
        return cls(**row)

    @property
    def done(self) -> bool:
        return self.state != RUNNING


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OperationLog:
    """An operation's log file: NDJSON ``{"at", "line"}``, one object per text line.
    ``write`` may be called from any thread; waiting followers are woken."""

    def __init__(self, path: Path, on_write: Callable[[], None] | None = None) -> None:
        self.path = path
        self._on_write = on_write
        self._lock = threading.Lock()
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def write(self, text: str) -> None:
        lines = text.splitlines() or [""]
        payload = "".join(
            json.dumps({"at": _now(), "line": line}, ensure_ascii=False) + "\n" for line in lines
        )
        with self._lock:
            if self._file is None:
                return
            self._file.write(payload)
            self._file.flush()
        if self._on_write is not None:
            self._on_write()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


Job = Callable[[OperationLog], Awaitable[dict[str, Any] | None]]


def error_payload(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, AtelierError):
        return exc.to_payload()
    return RuntimeFailure(f"{type(exc).__name__}: {exc}").to_payload()


class OperationManager:
    """Starts operations, tracks the ones running in this process, streams logs."""

    def __init__(self, settings: Settings, repo: Repository) -> None:
        self.settings = settings
        self.repo = repo
        self.dir = settings.data_dir / "operations"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def log_path(self, op_id: str) -> Path:
        return self.dir / f"{op_id}.log"

    def work_dir(self, op_id: str) -> Path:
        """Scratch space of one operation (an uploaded build context), removed at the end."""
        return self.dir / f"{op_id}.work"

    @staticmethod
    def new_id() -> str:
        return f"op-{secrets.token_hex(6)}"

    async def recover(self) -> list[str]:
        """At start-up: operations still ``running`` died with the previous server."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        failed = await self.repo.fail_running_operations(
            RuntimeFailure(
                "the server stopped while this operation ran; start it again"
            ).to_payload()
        )
        for op_id in failed:
            line = "error: the server stopped while this operation ran"
            with contextlib.suppress(OSError), self.log_path(op_id).open("a") as fh:
                fh.write(json.dumps({"at": _now(), "line": line}) + "\n")
            work = self.work_dir(op_id)
            if work.exists():
                await asyncio.to_thread(shutil.rmtree, work, True)
        if failed:
            log.warning("marked %d interrupted operations failed", len(failed))
        return failed

    async def start(
        self,
        kind: str,
        target: str,
        owner: str | None,
        job: Job,
        *,
        op_id: str | None = None,
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> Operation:
        """Record a new running operation and run ``job(log)`` as a task; the
        job's return value becomes the operation's ``result``."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        op_id = op_id or self.new_id()
        row = await self.repo.add_operation(op_id, kind, target, owner)
        loop = asyncio.get_running_loop()
        changed = self._changed[op_id] = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown)
                loop.call_soon_threadsafe(changed.set)

        oplog = OperationLog(self.log_path(op_id), wake)
        self._tasks[op_id] = loop.create_task(
            self._run(op_id, job, oplog, cleanup), name=f"operation-{op_id}"
        )
        return Operation.from_row(row)

    async def _run(
        self,
        op_id: str,
        job: Job,
        oplog: OperationLog,
        cleanup: Callable[[], Awaitable[None]] | None,
    ) -> None:
        state, error, result = FAILED, None, None
        try:
            result = await job(oplog)
            state = SUCCEEDED
        except asyncio.CancelledError:
            error = RuntimeFailure("the server stopped while this operation ran").to_payload()
            oplog.write("error: the server stopped while this operation ran")
            raise
        except Exception as exc:
            error = error_payload(exc)
            oplog.write(f"error: {error['message']}")
            if not isinstance(exc, AtelierError):
                log.exception("operation %s failed", op_id)
        finally:
            oplog.close()
            if cleanup is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(cleanup())
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.repo.finish_operation(op_id, state, error=error, result=result)
                )
            self._tasks.pop(op_id, None)
            event = self._changed.pop(op_id, None)
            if event is not None:
                event.set()

    def running(self, op_id: str) -> bool:
        return op_id in self._tasks

    async def wait(self, op_id: str) -> Operation:
        """Wait for an operation of this process to end (tests, shutdown)."""
        task = self._tasks.get(op_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        return await self._get(op_id)

    async def _get(self, op_id: str) -> Operation:
        row = await self.repo.get_operation(op_id)
        if row is None:
            raise OperationNotFound(f"operation {op_id} does not exist")
        return Operation.from_row(row)

    async def get(self, principal: Principal, op_id: str) -> Operation:
        """The operation, if ``principal`` started it or is an admin."""
        op = await self.repo.get_operation(op_id)
        if op is None or (not principal.admin and op["owner"] != principal.token_id):
            raise OperationNotFound(f"operation {op_id} does not exist")
        return Operation.from_row(op)

    async def list(self, principal: Principal, limit: int = 100) -> list[Operation]:
        rows = await self.repo.list_operations(
            owner=None if principal.admin else principal.token_id, limit=limit
        )
        return [Operation.from_row(r) for r in rows]

    async def stream_logs(self, op_id: str, *, follow: bool) -> AsyncIterator[bytes]:
        """The log's NDJSON lines, then ``{"state", "error"?, "result"?}``. With
        ``follow`` it waits for new lines until the operation ends; without, the
        state line says ``running`` if it has not ended yet."""
        path = self.log_path(op_id)
        offset = 0
        pending = b""
        while True:
            done = not self.running(op_id)  # checked before reading: nothing is missed
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except FileNotFoundError:
                data = b""
            offset += len(data)
            pending += data
            if b"\n" in pending:
                complete, _, pending = pending.rpartition(b"\n")
                yield complete + b"\n"
            if done or not follow:
                break
            event = self._changed.get(op_id)
            if event is None:
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), FOLLOW_POLL_SECONDS)
            event.clear()
        op = await self._get(op_id)
        end: dict[str, Any] = {"state": op.state}
        if op.error is not None:
            end["error"] = op.error
        if op.result is not None:
            end["result"] = op.result
        yield (json.dumps(end) + "\n").encode()

    async def close(self) -> None:
        """Cancel the operations still running (server shutdown): they end ``failed``."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
