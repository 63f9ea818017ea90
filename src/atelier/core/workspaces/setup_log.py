"""The setup log of a workspace: clone, image, copy and lifecycle output.

One file per workspace, ``<data_dir>/workspaces/<sandbox id>/setup.log``,
appended line by line with a UTC timestamp and the step it came from; the
sandbox's ``logs`` include it. Kept when setup fails (that is when it is
read); removed with the sandbox.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["SetupLog", "remove_workspace_files", "setup_log_path", "workspace_dir"]


def workspace_dir(data_dir: Path, sandbox_id: str) -> Path:
    return data_dir / "workspaces" / sandbox_id


def setup_log_path(data_dir: Path, sandbox_id: str) -> Path:
    return workspace_dir(data_dir, sandbox_id) / "setup.log"


def remove_workspace_files(data_dir: Path, sandbox_id: str) -> None:
    shutil.rmtree(workspace_dir(data_dir, sandbox_id), ignore_errors=True)


class SetupLog:
    """Append-only, thread-safe (image pulls report progress from a thread).
    ``tee`` also receives every line (a prebuild's build log)."""

    def __init__(self, path: Path, tee: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.tee = tee
        self._lock = threading.Lock()
        self._partial: dict[str, str] = {}
        path.parent.mkdir(parents=True, exist_ok=True)

    def line(self, source: str, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            for piece in text.splitlines() or [""]:
                fh.write(f"{stamp} [{source}] {piece}\n")
        if self.tee is not None:
            for piece in text.splitlines() or [""]:
                self.tee(f"[{source}] {piece}")

    def output(self, source: str, data: bytes) -> None:
        """A chunk of a command's output: complete lines are written, the rest waits."""
        text = self._partial.pop(source, "") + data.decode(errors="replace")
        head, newline, tail = text.rpartition("\n")
        if newline:
            self.line(source, head)
        if tail:
            self._partial[source] = tail

    def flush(self, source: str) -> None:
        if rest := self._partial.pop(source, ""):
            self.line(source, rest)

    def tail(self, max_chars: int = 4000) -> str:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]
