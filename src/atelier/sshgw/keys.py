"""Public keys registered for the SSH gateway: validation, fingerprints, per-token CRUD.

A key is owned by the API token that registered it. Logging in with it gives the
access that token has: its own sandboxes, or every sandbox for an admin token.
"""

from __future__ import annotations

import builtins
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncssh

from ..core.auth import Principal
from ..errors import InvalidRequest, NotFound
from ..store.ssh_keys import SSHKeyRecord, SSHKeyRepository

__all__ = ["NAME_PATTERN", "ParsedKey", "SSHKeyInfo", "SSHKeyService", "parse_public_key"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)
# Algorithms a registered key may use (DSA and short RSA keys are refused).
_ALGORITHMS = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
}
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class ParsedKey:
    algorithm: str
    public_key: str  # "<algorithm> <base64>", no comment
    fingerprint: str  # "SHA256:<base64, unpadded>", as ssh-keygen -l prints it
    comment: str | None


@dataclass(frozen=True, slots=True)
class SSHKeyInfo:
    name: str
    public_key: str
    fingerprint: str
    created_at: datetime


def fingerprint_of(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def parse_public_key(text: str) -> ParsedKey:
    """Validate one OpenSSH public key line (``ssh-ed25519 AAAA... comment``)."""
    text = text.strip()
    if not text:
        raise InvalidRequest("the public key is empty")
    if "PRIVATE KEY" in text:
        raise InvalidRequest("this is a private key: register the public key (the .pub file)")
    if "\n" in text:
        raise InvalidRequest("give exactly one public key (one line)")
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidRequest(f"not a valid OpenSSH public key: {exc}") from None
    algorithm = key.get_algorithm()
    if algorithm not in _ALGORITHMS:
        raise InvalidRequest(
            f"key type {algorithm} is not accepted; use ssh-ed25519, ecdsa or rsa (>= 2048 bits)"
        )
    if algorithm == "ssh-rsa":
        modulus = getattr(getattr(key, "_key", None), "n", None)
        bits = modulus.bit_length() if isinstance(modulus, int) else 0
        if bits and bits < _MIN_RSA_BITS:
            raise InvalidRequest(f"RSA keys need at least {_MIN_RSA_BITS} bits (this one: {bits})")
    raw = key.export_public_key("openssh").decode().split()
    comment = key.get_comment()
    return ParsedKey(algorithm, " ".join(raw[:2]), fingerprint_of(key), comment or None)


def _info(record: SSHKeyRecord) -> SSHKeyInfo:
    return SSHKeyInfo(record.name, record.public_key, record.fingerprint, record.created_at)


class SSHKeyService:
    def __init__(self, repo: SSHKeyRepository) -> None:
        self.repo = repo

    async def add(self, owner: str, name: str, public_key: str) -> SSHKeyInfo:
        """Register a key for ``owner`` (a token id); 409 if the name or the key is taken."""
        if not _NAME.match(name):
            raise InvalidRequest(
                "a key name is 1-100 letters, digits, '.', '_', '@' or '-' "
                "(starting with a letter or digit)"
            )
        parsed = parse_public_key(public_key)
        record = SSHKeyRecord(
            id=secrets.token_hex(8),
            owner=owner,
            name=name,
            public_key=parsed.public_key,
            fingerprint=parsed.fingerprint,
            created_at=datetime.now(UTC),
        )
        await self.repo.add(record)
        return _info(record)

    async def list(self, owner: str) -> list[SSHKeyInfo]:
        return [_info(r) for r in await self.repo.list(owner)]

    async def delete(self, owner: str, name: str) -> None:
        if not await self.repo.delete(owner, name):
            raise NotFound(f"no SSH key named {name!r}", details={"name": name})

    async def principals(self, key: asyncssh.SSHKey) -> builtins.list[tuple[Principal, str]]:
        """The live tokens that registered ``key``, each with the key's name there."""
        owners = await self.repo.owners(fingerprint_of(key))
        return [(Principal(o.token_id, o.token_name, o.admin), o.key_name) for o in owners]
