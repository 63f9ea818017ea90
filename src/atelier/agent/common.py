"""Small helpers shared by the agent's modules (standard library only)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from typing import Any

__all__ = [
    "AgentError",
    "exit_fields",
    "from_oserror",
    "iso_utc",
    "log",
    "parse_mode",
    "parse_signal",
    "require_abs_path",
]

log = logging.getLogger("atelier.agent")


class AgentError(Exception):
    """A request failed; ``code`` is one of the stable codes of ``atelier.errors``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


_ERRNO_CODES = {
    errno.ENOENT: "file_not_found",
    errno.EISDIR: "is_a_directory",
    errno.ENOTDIR: "not_a_directory",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
    errno.EEXIST: "file_exists",
    errno.ENOTEMPTY: "directory_not_empty",
    errno.ELOOP: "invalid_path",
    errno.ENAMETOOLONG: "invalid_path",
    errno.EXDEV: "invalid_request",
    errno.EINVAL: "invalid_request",
    errno.EBUSY: "invalid_request",
}


def from_oserror(exc: OSError, path: str | None = None) -> AgentError:
    """Translate an ``OSError`` into the matching :class:`AgentError`."""
    code = _ERRNO_CODES.get(exc.errno or 0, "internal")
    where = path if path is not None else exc.filename
    reason = exc.strerror or str(exc)
    return AgentError(code, f"{reason}: {where}" if where is not None else reason)


def require_abs_path(value: Any, name: str = "path") -> str:
    """Validate a request path: a string, absolute, no NUL; returned normalized."""
    if not isinstance(value, str) or not value:
        raise AgentError("invalid_path", f"{name} must be a non-empty string")
    if "\0" in value:
        raise AgentError("invalid_path", f"{name} contains a NUL byte")
    if not value.startswith("/"):
        raise AgentError("invalid_path", f"{name} must be absolute: {value!r}")
    norm = os.path.normpath(value)
    if norm.startswith("//"):  # POSIX keeps a leading '//'
        norm = "/" + norm.lstrip("/")
    return norm


def parse_mode(value: Any, default: int) -> int:
    """An octal permission string (``"0644"``, ``"755"``, ``"0o600"``) or an int."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise AgentError("invalid_request", f"invalid mode {value!r}")
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            raise AgentError("invalid_request", f"invalid mode {value!r}") from None
    else:
        raise AgentError("invalid_request", f"invalid mode {value!r}")
    if not 0 <= mode <= 0o7777:
        raise AgentError("invalid_request", f"invalid mode {value!r}")
    return mode


def parse_signal(value: Any) -> signal.Signals:
    """``"SIGTERM"``, ``"TERM"``, ``15`` or ``"15"`` → ``signal.SIGTERM``."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return signal.Signals(value)
        if isinstance(value, str):
            text = value.strip().upper()
            if text.isdigit():
                return signal.Signals(int(text))
            if not text.startswith("SIG"):
                text = "SIG" + text
            return signal.Signals[text]
    except (ValueError, KeyError):
        pass
    raise AgentError("invalid_request", f"unknown signal {value!r}")


def exit_fields(status: int) -> tuple[int, str | None]:
    """A raw wait status → ``(exit_code, signal name or None)``; signals map to 128+n."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return code, None
    signo = -code
    try:
        name: str | None = signal.Signals(signo).name
    except ValueError:
        name = f"SIG{signo}"
    return 128 + signo, name


def iso_utc(timestamp: float) -> str:
    """Seconds since the epoch → ``2026-11-27T18:30:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
