"""Output limits: what a tool hands back to the model is always bounded.

Pure functions and one small accumulator, no I/O: the unit tests pin them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

__all__ = [
    "FILE_LIST_LIMIT",
    "READ_LIMIT",
    "STREAM_LIMIT",
    "BoundedOutput",
    "FileContent",
    "decode_file",
]

STREAM_LIMIT = 64 * 1024
"""Bytes of stdout (and, separately, of stderr) a command result may carry."""

READ_LIMIT = 256 * 1024
"""Bytes of a file ``read_file`` returns (before base64)."""

FILE_LIST_LIMIT = 1000
"""Entries ``list_files`` returns."""


def _clean_cut(data: bytes, *, at_start: bool) -> str:
    """Decode a slice cut out of a UTF-8 stream, dropping a character split by the cut."""
    if at_start:  # the slice may begin inside a character: skip its continuation bytes
        skip = 0
        while skip < min(3, len(data)) and (data[skip] & 0xC0) == 0x80:
            skip += 1
        return data[skip:].decode("utf-8", "replace")
    while data and _ends_mid_char(data):
        data = data[:-1]
    return data.decode("utf-8", "replace")


def _ends_mid_char(data: bytes) -> bool:
    """Whether the last bytes are an incomplete UTF-8 sequence (so the cut split one)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue
        if byte & 0x80 == 0:
            return False
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return back < need
    return False


@dataclass
class BoundedOutput:
    """One output stream kept to ``limit`` bytes: the first half and the last half.

    Memory stays O(limit) however much the process writes; :meth:`text` says
    how many bytes were left out, and where.
    """

    limit: int = STREAM_LIMIT
    total: int = 0
    _head: bytearray = field(default_factory=bytearray)
    _tail: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if self.limit < 2:
            raise ValueError("limit must be at least 2 bytes")

    @property
    def _head_limit(self) -> int:
        return self.limit // 2

    @property
    def _tail_limit(self) -> int:
        return self.limit - self._head_limit

    def feed(self, chunk: str | bytes) -> None:
        data = chunk.encode("utf-8") if isinstance(chunk, str) else chunk
        self.total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > self._tail_limit:
                del self._tail[: len(self._tail) - self._tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    @property
    def omitted(self) -> int:
        return max(0, self.total - len(self._head) - len(self._tail))

    def text(self) -> str:
        if not self.truncated:
            return bytes(self._head + self._tail).decode("utf-8", "replace")
        head = _clean_cut(bytes(self._head), at_start=False)
        tail = _clean_cut(bytes(self._tail), at_start=True)
        note = (
            f"\n[... {self.omitted} bytes omitted: output was {self.total} bytes, "
            f"only the first {len(self._head)} and the last {len(self._tail)} are shown ...]\n"
        )
        return head + note + tail


@dataclass(frozen=True)
class FileContent:
    """What ``read_file`` returns: text, or base64 for bytes that are not UTF-8."""

    content: str
    encoding: str  # "utf-8" | "base64"
    size: int  # bytes of the whole file (as far as it was read)
    returned: int  # bytes represented in ``content``
    truncated: bool

    @property
    def note(self) -> str | None:
        parts: list[str] = []
        if self.encoding == "base64":
            parts.append("the file is not UTF-8 text: content is base64")
        if self.truncated:
            parts.append(
                f"truncated: the file is {self.size} bytes, only the first "
                f"{self.returned} are returned"
            )
        return "; ".join(parts) or None


def _utf8(data: bytes, *, cut: bool) -> str | None:
    """``data`` as text, or ``None`` if it is not UTF-8. With ``cut``, a character
    split by the cut at the end is dropped rather than making the data binary."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if cut and _ends_mid_char(data):
        for drop in (1, 2, 3):
            try:
                return data[:-drop].decode("utf-8")
            except UnicodeDecodeError:
                continue
    return None


def decode_file(data: bytes, size: int, limit: int = READ_LIMIT) -> FileContent:
    """``data`` is the first bytes of a file of ``size`` bytes (read up to ``limit + 1``)."""
    size = max(size, len(data))
    truncated = size > limit
    shown = data[:limit]
    text = _utf8(shown, cut=truncated)
    if text is not None:
        return FileContent(text, "utf-8", size, len(shown), truncated)
    return FileContent(
        base64.b64encode(shown).decode("ascii"), "base64", size, len(shown), truncated
    )
