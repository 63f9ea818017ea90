"""An async client for Firecracker's HTTP API on its unix socket.

One typed method per endpoint Atelier uses. Paths, methods and body field
names follow Firecracker's Swagger document (``specs/firecracker-api.yaml``,
1.17.0-dev) exactly; the unit tests validate every request this module sends
against that document. Bodies are built from small frozen dataclasses whose
``to_json()`` leaves out the optional fields that are ``None`` (Firecracker
rejects unknown fields and treats absent optional ones as their defaults).

Errors: an answer outside 2xx becomes :class:`~atelier.errors.RuntimeFailure`
carrying Firecracker's ``fault_message``; a socket that cannot be reached
becomes a ``RuntimeFailure`` as well (``raise ... from`` the httpx error).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from ...errors import RuntimeFailure

__all__ = [
    "ActionType",
    "Balloon",
    "BootSource",
    "Drive",
    "FirecrackerApi",
    "InstanceInfo",
    "Logger",
    "MachineConfig",
    "MemoryBackend",
    "Metrics",
    "RateLimiter",
    "SnapshotCreate",
    "SnapshotLoad",
    "SnapshotType",
    "TokenBucket",
    "VmState",
    "Vsock",
]

_DEVICE_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # Firecracker's rule for drive ids


def _compact(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class ActionType(enum.Enum):
    """``InstanceActionInfo.action_type``."""

    INSTANCE_START = "InstanceStart"
    SEND_CTRL_ALT_DEL = "SendCtrlAltDel"  # x86_64 only
    FLUSH_METRICS = "FlushMetrics"


class VmState(enum.Enum):
    """``Vm.state`` (what ``PATCH /vm`` asks for)."""

    PAUSED = "Paused"
    RESUMED = "Resumed"


class SnapshotType(enum.Enum):
    """``SnapshotCreateParams.snapshot_type``; ``DIFF`` needs ``track_dirty_pages``."""

    FULL = "Full"
    DIFF = "Diff"


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``TokenBucket``: ``size`` tokens (bytes or operations) refilled every
    ``refill_time`` ms, plus an initial ``one_time_burst``."""

    size: int
    refill_time: int
    one_time_burst: int | None = None

    def __post_init__(self) -> None:
        if self.size < 0 or self.refill_time < 0 or (self.one_time_burst or 0) < 0:
            raise ValueError("token bucket sizes and times must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return _compact(
            size=self.size, refill_time=self.refill_time, one_time_burst=self.one_time_burst
        )


@dataclass(frozen=True, slots=True)
class RateLimiter:
    """``RateLimiter``: independent bytes/s (``bandwidth``) and ops/s (``ops``) buckets."""

    bandwidth: TokenBucket | None = None
    ops: TokenBucket | None = None

    @classmethod
    def per_second(
        cls, *, bytes_per_s: int | None = None, ops_per_s: int | None = None
    ) -> RateLimiter:
        """A limiter of ``bytes_per_s`` and/or ``ops_per_s`` (1 s refill, no burst)."""
        return cls(
            bandwidth=TokenBucket(bytes_per_s, 1000) if bytes_per_s is not None else None,
            ops=TokenBucket(ops_per_s, 1000) if ops_per_s is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        return _compact(
            bandwidth=self.bandwidth.to_json() if self.bandwidth else None,
            ops=self.ops.to_json() if self.ops else None,
        )


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """``MachineConfiguration`` (``PUT /machine-config``)."""

    vcpu_count: int
    mem_size_mib: int
    smt: bool = False
    track_dirty_pages: bool = False  # needed for Diff snapshots

    def __post_init__(self) -> None:
        if not 1 <= self.vcpu_count <= 32:
            raise ValueError("vcpu_count must be 1..32")
        if self.smt and self.vcpu_count != 1 and self.vcpu_count % 2:
            raise ValueError("with SMT, vcpu_count must be 1 or even")

    def to_json(self) -> dict[str, Any]:
        return {
            "vcpu_count": self.vcpu_count,
            "mem_size_mib": self.mem_size_mib,
            "smt": self.smt,
            "track_dirty_pages": self.track_dirty_pages,
        }


@dataclass(frozen=True, slots=True)
class BootSource:
    """``BootSource`` (``PUT /boot-source``): an uncompressed ``vmlinux`` on x86_64."""

    kernel_image_path: str
    boot_args: str | None = None
    initrd_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact(
            kernel_image_path=self.kernel_image_path,
            boot_args=self.boot_args,
            initrd_path=self.initrd_path,
        )


@dataclass(frozen=True, slots=True)
class Drive:
    """``Drive`` (``PUT /drives/{drive_id}``), a virtio-block device on a host file."""

    drive_id: str
    path_on_host: str
    is_root_device: bool
    is_read_only: bool = False
    rate_limiter: RateLimiter | None = None

    def __post_init__(self) -> None:
        if not _DEVICE_ID.fullmatch(self.drive_id):
            raise ValueError(f"invalid drive id {self.drive_id!r}: use 1-64 of A-Z a-z 0-9 _")

    def to_json(self) -> dict[str, Any]:
        return _compact(
            drive_id=self.drive_id,
            path_on_host=self.path_on_host,
            is_root_device=self.is_root_device,
            is_read_only=self.is_read_only,
            rate_limiter=self.rate_limiter.to_json() if self.rate_limiter else None,
        )


@dataclass(frozen=True, slots=True)
class Vsock:
    """``Vsock`` (``PUT /vsock``): Firecracker's hybrid vsock; its host side is
    the unix socket ``uds_path`` (see :mod:`.vsock` for the handshake)."""

    guest_cid: int
    uds_path: str

    def __post_init__(self) -> None:
        if self.guest_cid < 3:
            raise ValueError("guest_cid must be >= 3 (0-2 are reserved)")

    def to_json(self) -> dict[str, Any]:
        return {"guest_cid": self.guest_cid, "uds_path": self.uds_path}


@dataclass(frozen=True, slots=True)
class Balloon:
    """``Balloon`` (``PUT /balloon``): memory the host can take back from the guest."""

    amount_mib: int
    deflate_on_oom: bool
    stats_polling_interval_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact(
            amount_mib=self.amount_mib,
            deflate_on_oom=self.deflate_on_oom,
            stats_polling_interval_s=self.stats_polling_interval_s,
        )


@dataclass(frozen=True, slots=True)
class Logger:
    """``Logger`` (``PUT /logger``). The file must exist: Firecracker opens, never creates it."""

    log_path: str
    level: str | None = "Info"  # Error, Warning, Info, Debug, Trace, Off
    show_level: bool | None = True
    show_log_origin: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact(
            log_path=self.log_path,
            level=self.level,
            show_level=self.show_level,
            show_log_origin=self.show_log_origin,
        )


@dataclass(frozen=True, slots=True)
class Metrics:
    """``Metrics`` (``PUT /metrics``). The file must exist, as for the logger."""

    metrics_path: str

    def to_json(self) -> dict[str, Any]:
        return {"metrics_path": self.metrics_path}


@dataclass(frozen=True, slots=True)
class SnapshotCreate:
    """``SnapshotCreateParams`` (``PUT /snapshot/create``); the VM must be paused."""

    snapshot_path: str
    mem_file_path: str
    snapshot_type: SnapshotType = SnapshotType.FULL

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_type": self.snapshot_type.value,
            "snapshot_path": self.snapshot_path,
            "mem_file_path": self.mem_file_path,
        }


@dataclass(frozen=True, slots=True)
class MemoryBackend:
    """``MemoryBackend``: ``File`` (the memory file, mapped private) or ``Uffd``."""

    backend_path: str
    backend_type: str = "File"

    def to_json(self) -> dict[str, Any]:
        return {"backend_type": self.backend_type, "backend_path": self.backend_path}


@dataclass(frozen=True, slots=True)
class SnapshotLoad:
    """``SnapshotLoadParams`` (``PUT /snapshot/load``), only on a fresh process.

    Uses ``mem_backend`` (``mem_file_path`` is deprecated and the two exclude
    each other)."""

    snapshot_path: str
    mem_backend: MemoryBackend
    resume_vm: bool = False
    track_dirty_pages: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact(
            snapshot_path=self.snapshot_path,
            mem_backend=self.mem_backend.to_json(),
            resume_vm=self.resume_vm,
            track_dirty_pages=self.track_dirty_pages,
        )


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """``InstanceInfo`` (``GET /``); ``state`` is "Not started", "Running" or "Paused"."""

    app_name: str
    id: str
    state: str
    vmm_version: str


class FirecrackerApi:
    """One Firecracker process's API, reached through its unix socket."""

    def __init__(self, socket_path: Path | str, *, timeout: float = 10.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        # Plain HTTP over a unix socket: TLS is never used, so no SSL context
        # (building httpx's default one costs ~70 ms per client).
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket_path), verify=False),
            base_url="http://localhost",
            timeout=timeout,
            verify=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> FirecrackerApi:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- transport --------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        try:
            response = await self._client.request(
                method,
                path,
                json=body,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except httpx.HTTPError as exc:
            raise RuntimeFailure(
                f"firecracker API at {self.socket_path} unreachable ({method} {path}): {exc!r}",
                details={"socket": str(self.socket_path), "method": method, "path": path},
            ) from exc
        if response.is_success:
            if response.status_code == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError as exc:
                raise RuntimeFailure(
                    f"firecracker {method} {path}: answer is not JSON: {response.text[:200]!r}"
                ) from exc
        raise _failure(method, path, response)

    # -- endpoints --------------------------------------------------------------
    async def describe_instance(self) -> InstanceInfo:
        """``GET /``."""
        data = await self._call("GET", "/")
        if not isinstance(data, dict):
            raise RuntimeFailure(f"firecracker GET /: unexpected answer {data!r}")
        try:
            return InstanceInfo(
                app_name=str(data["app_name"]),
                id=str(data["id"]),
                state=str(data["state"]),
                vmm_version=str(data["vmm_version"]),
            )
        except KeyError as exc:
            raise RuntimeFailure(f"firecracker GET /: missing field {exc}") from exc

    async def put_machine_config(self, config: MachineConfig) -> None:
        await self._call("PUT", "/machine-config", config.to_json())

    async def put_boot_source(self, boot: BootSource) -> None:
        await self._call("PUT", "/boot-source", boot.to_json())

    async def put_drive(self, drive: Drive) -> None:
        await self._call("PUT", f"/drives/{quote(drive.drive_id, safe='')}", drive.to_json())

    async def put_vsock(self, vsock: Vsock) -> None:
        await self._call("PUT", "/vsock", vsock.to_json())

    async def put_balloon(self, balloon: Balloon) -> None:
        await self._call("PUT", "/balloon", balloon.to_json())

    async def put_logger(self, logger: Logger) -> None:
        await self._call("PUT", "/logger", logger.to_json())

    async def put_metrics(self, metrics: Metrics) -> None:
        await self._call("PUT", "/metrics", metrics.to_json())

    async def action(self, action: ActionType) -> None:
        """``PUT /actions``."""
        await self._call("PUT", "/actions", {"action_type": action.value})

    async def instance_start(self) -> None:
        await self.action(ActionType.INSTANCE_START)

    async def send_ctrl_alt_del(self) -> None:
        await self.action(ActionType.SEND_CTRL_ALT_DEL)

    async def set_vm_state(self, state: VmState) -> None:
        """``PATCH /vm``."""
        await self._call("PATCH", "/vm", {"state": state.value})

    async def pause(self) -> None:
        await self.set_vm_state(VmState.PAUSED)

    async def resume(self) -> None:
        await self.set_vm_state(VmState.RESUMED)

    async def create_snapshot(self, params: SnapshotCreate, *, timeout: float = 300.0) -> None:
        """``PUT /snapshot/create`` (writes the whole guest memory: may take a while)."""
        await self._call("PUT", "/snapshot/create", params.to_json(), timeout=timeout)

    async def load_snapshot(self, params: SnapshotLoad, *, timeout: float = 300.0) -> None:
        """``PUT /snapshot/load``."""
        await self._call("PUT", "/snapshot/load", params.to_json(), timeout=timeout)


def _failure(method: str, path: str, response: httpx.Response) -> RuntimeFailure:
    fault: str | None = None
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("fault_message"), str):
        fault = body["fault_message"]
    message = fault or response.text.strip()[:500] or response.reason_phrase
    return RuntimeFailure(
        f"firecracker {method} {path} failed ({response.status_code}): {message}",
        details={
            "method": method,
            "path": path,
            "status": response.status_code,
            "fault_message": fault,
        },
    )
