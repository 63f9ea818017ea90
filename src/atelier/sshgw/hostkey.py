"""The gateway's host key: an ed25519 key made on first start, kept 0600."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

__all__ = ["load_or_create_host_key"]


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """Read the private key at ``path``; create it (0600, parents 0700) if missing."""
    if path.exists():
        return asyncssh.read_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="atelier-gateway")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key("openssh"))
    os.replace(tmp, path)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.export_public_key("openssh"))
    return key
