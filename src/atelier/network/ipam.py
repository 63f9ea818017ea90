"""Address management: one small subnet per sandbox, from a configurable pool.

Each sandbox leases a /30 (by default) of the pool: the first host address is
the gateway (the host side of its veth), the second the sandbox's. Leases live
in ``<state_dir>/leases.json``; every change happens under an exclusive
``flock`` on ``<state_dir>/leases.lock`` and is written atomically (temp file,
fsync, rename), so concurrent creates (threads, processes) and a restarted
server never hand out the same subnet twice.

``allocate`` also skips subnets that overlap ``in_use`` (networks already on
this host's interfaces, e.g. another Atelier instance's sandboxes).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest, RuntimeFailure, ServiceUnavailable

__all__ = ["Ipam", "Lease"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class Lease:
    sandbox_id: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + (0 if self.subnet.prefixlen == 31 else 1)

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + (1 if self.subnet.prefixlen == 31 else 2)

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    def to_json(self) -> dict[str, Any]:
        return {"sandbox_id": self.sandbox_id, "subnet": str(self.subnet)}


class Ipam:
    """Leases of ``pool`` split into ``/prefixlen`` subnets, persisted under ``state_dir``."""

    def __init__(self, state_dir: Path, pool: str, prefixlen: int = 30) -> None:
        try:
            self.pool = ipaddress.IPv4Network(pool, strict=True)
        except ValueError as exc:
            raise InvalidRequest(f"invalid network pool {pool!r}: {exc}") from exc
        if prefixlen not in (30, 31) or self.pool.prefixlen > prefixlen:
            raise InvalidRequest(f"network pool {pool} cannot hold /{prefixlen} subnets")
        self.prefixlen = prefixlen
        self.state_dir = state_dir
        self.path = state_dir / "leases.json"
        self.lock_path = state_dir / "leases.lock"

    # -- public API ----------------------------------------------------------------
    def get(self, sandbox_id: str) -> Lease | None:
        return self.leases().get(sandbox_id)

    def leases(self) -> dict[str, Lease]:
        if not self.path.exists():
            return {}  # a read never creates the state dir
        with self._locked():
            return self._read()

    def allocate(self, sandbox_id: str, *, in_use: Iterable[ipaddress.IPv4Network] = ()) -> Lease:
        """The sandbox's lease; an existing one is returned unchanged."""
        busy = [n for n in in_use if n.version == 4]
        with self._locked():
            leases = self._read()
            if sandbox_id in leases:
                return leases[sandbox_id]
            taken = {lease.subnet for lease in leases.values()}
            for subnet in self.pool.subnets(new_prefix=self.prefixlen):
                if subnet in taken or any(subnet.overlaps(n) for n in busy):
                    continue
                lease = Lease(sandbox_id, subnet)
                leases[sandbox_id] = lease
                self._write(leases)
                return lease
        raise ServiceUnavailable(
            f"network pool {self.pool} is exhausted ({len(leases)} leases)",
            details={"pool": str(self.pool)},
        )

    def release(self, sandbox_id: str) -> bool:
        """Forget the sandbox's lease; False if it had none."""
        with self._locked():
            leases = self._read()
            if leases.pop(sandbox_id, None) is None:
                return False
            self._write(leases)
            return True

    def reconcile(self, known_ids: Iterable[str]) -> list[str]:
        """Release the leases of sandboxes not in ``known_ids``; return their ids."""
        known = set(known_ids)
        with self._locked():
            leases = self._read()
            gone = sorted(sid for sid in leases if sid not in known)
            if gone:
                for sid in gone:
                    del leases[sid]
                self._write(leases)
            return gone

    # -- storage -------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the lock

    def _read(self) -> dict[str, Lease]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(f"cannot read {self.path}: {exc}") from exc
        try:
            leases = {}
            for item in data.get("leases", []):
                lease = Lease(str(item["sandbox_id"]), ipaddress.IPv4Network(item["subnet"]))
                leases[lease.sandbox_id] = lease
            return leases
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RuntimeFailure(f"corrupt lease file {self.path}: {exc!r}") from exc

    def _write(self, leases: dict[str, Lease]) -> None:
        payload = {
            "version": _VERSION,
            "pool": str(self.pool),
            "leases": [leases[sid].to_json() for sid in sorted(leases)],
        }
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
