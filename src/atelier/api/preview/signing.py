"""Signed, expiring preview grants (links and session cookies).

A grant is ``<kind>.<expires>.<signature>``: ``kind`` is ``l`` (a link minted
through the API) or ``s`` (a session cookie issued after the owner's token was
shown), ``expires`` is a Unix time, and the signature is
``HMAC-SHA256(key, "atelier-preview-v1|kind|sandbox|port|expires")``,
base64url without padding. The key is 32 random bytes in
``<data_dir>/preview-key`` (mode 0600), made on first use; deleting the file
(and restarting the server) revokes every link and cookie.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Literal

__all__ = ["GrantKind", "PreviewSigner", "load_or_create_key"]

GrantKind = Literal["l", "s"]
_KEY_BYTES = 32


def load_or_create_key(path: Path) -> bytes:
    """The server's preview key; created (0600, exclusively) if it does not exist."""
    try:
        text = path.read_text().strip()
        if text:
            return bytes.fromhex(text)
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(_KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return key


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class PreviewSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the preview key is too short")
        self._key = key

    def _sign(self, kind: str, sandbox_id: str, port: int, expires: int) -> str:
        msg = f"atelier-preview-v1|{kind}|{sandbox_id}|{port}|{expires}".encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest())

    def issue(self, kind: GrantKind, sandbox_id: str, port: int, ttl_seconds: float) -> str:
        expires = int(time.time() + ttl_seconds)
        return f"{kind}.{expires}.{self._sign(kind, sandbox_id, port, expires)}"

    def verify(
        self, grant: str, sandbox_id: str, port: int, now: float | None = None
    ) -> int | None:
        """The grant's expiry (Unix time) if it is genuine, for this port, and not expired."""
        parts = grant.split(".")
        if len(parts) != 3 or parts[0] not in ("l", "s"):
            return None
        kind, expires_text, signature = parts
        if not expires_text.isdigit() or len(expires_text) > 12:
            return None
        expires = int(expires_text)
        expected = self._sign(kind, sandbox_id, port, expires)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return None
        if (time.time() if now is None else now) >= expires:
            return None
        return expires
