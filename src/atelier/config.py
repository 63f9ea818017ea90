"""Settings, in one place.

Sources, highest priority first: keyword arguments, ``ATELIER_*`` environment
variables, the TOML file named by ``ATELIER_CONFIG`` (default
``/etc/atelier/config.toml`` if it exists), then the defaults below.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings"]

DEFAULT_CONFIG_FILE = Path("/etc/atelier/config.toml")


def _config_file() -> Path | None:
    named = os.environ.get("ATELIER_CONFIG")
    if named:
        return Path(named)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore")

    data_dir: Path = Field(Path("/var/lib/atelier"), description="Where Atelier keeps its state.")
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file in the data dir."
    )
    default_runtime: str = "gvisor"
    default_template: str = "base"
    pool_size: int = Field(2, ge=0, description="Pre-started sandboxes kept per default template.")
    pool_refill_delay: float = Field(
        1.0,
        ge=0,
        description="Seconds to wait after a claim before booting a replacement, so the "
        "boot does not compete with the new sandbox's first commands.",
    )
    preboot: bool = Field(
        True,
        description="For runtimes with memory snapshots: create by restoring a snapshot of "
        "a freshly booted sandbox of the same shape (made in the background).",
    )
    preboot_runtimes: list[str] = Field(
        ["qemu", "firecracker"],
        description="The runtimes pre-booting applies to. Not gvisor by default: its clones "
        "cannot take a new hostname and each reads the whole memory image, no shared "
        "copy-on-write pages (docs/hibernate.md).",
    )
    reconcile_interval: float = Field(1.0, gt=0, description="Seconds between reconciler passes.")
    idle_check_interval: float = Field(
        5.0, gt=0, description="Seconds between passes of the idle auto-stop policy (core/idle.py)."
    )
    auto_stop_pause_after: float | None = Field(
        None, gt=0, description="Default idle policy: pause after this many idle seconds."
    )
    auto_stop_hibernate_after: float | None = Field(
        None, gt=0, description="Default idle policy: hibernate after this many idle seconds."
    )
    auto_stop_delete_after: float | None = Field(
        None, gt=0, description="Default idle policy: delete after this many idle seconds."
    )
    runsc_bin: str = "runsc"
    runsc_platform: str | None = Field(None, description="Force a runsc platform (default: probe).")
    debian_mirror: str = "http://deb.debian.org/debian"
    debian_suite: str = "bookworm"
    registry_mirrors: dict[str, str] = Field(
        default_factory=dict,
        description="Image repository rewrites applied before every pull (JSON object), "
        'e.g. {"docker.io/*": "mirror.local:5000/dockerhub/*"}; see docs/images.md.',
    )
    insecure_registries: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Registries (host[:port]) reached over plain HTTP or unverified TLS; "
        "comma-separated or a JSON list.",
    )
    workspace_template: str = Field(
        "base", description="Template of workspaces whose repository names no image or build."
    )
    allow_host_commands: bool = Field(
        False,
        description="Run a devcontainer.json's initializeCommand on this host (it is code "
        "from the repository, run outside any sandbox); refused when false.",
    )
    max_vcpus: int = Field(16, ge=1)
    max_memory_mib: int = Field(65536, ge=64)
    max_disk_mib: int = Field(1024 * 1024, ge=64)

    # -- networking (docs/network.md) ------------------------------------------------
    network_pool: str = Field(
        "10.213.0.0/16", description="IPv4 pool sandbox subnets (/30 each) are leased from."
    )
    network_default_mode: Literal["none", "egress", "open"] = Field(
        "none",
        description="Network mode of sandboxes whose request names none: none (loopback "
        "only), egress (allow-list) or open.",
    )
    network_dns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="IPv4 resolvers sandboxes use (comma-separated or a JSON list); "
        "default: the host's non-loopback nameservers from /etc/resolv.conf.",
    )
    network_nft_table: str = Field(
        "atelier", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,30}$", description="nftables inet table."
    )
    network_dns_refresh: float = Field(
        300.0, gt=0, description="Seconds between re-resolutions of policy domain names."
    )
    network_resolv_conf: Path = Field(
        Path("/etc/resolv.conf"),
        description="The host's resolver list. If it names only loopback stubs "
        "(127.0.0.53), sandboxes get Atelier's DNS forwarder, which relays to them.",
    )

    @field_validator("network_dns", mode="before")
    @classmethod
    def _split_network_dns(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    # -- end of networking -----------------------------------------------------------

    # -- preview URLs (docs/ports.md) ------------------------------------------
    preview_domain: str | None = Field(
        None,
        description="Wildcard DNS domain (host[:port]) for host-based preview URLs "
        "<port>-<sandbox-id>.<preview_domain>; unset: only path-based /preview/... URLs.",
    )

    # -- SSH gateway (atelier.sshgw, docs/ssh.md) ------------------------------------
    ssh_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the SSH gateway (e.g. 2222; 0: any free port); unset: no gateway.",
    )
    ssh_host: str | None = Field(
        None, description="Address the SSH gateway listens on; default: the API's `host`."
    )
    ssh_public_host: str | None = Field(
        None,
        description="Host name clients should use for the gateway (`atelier ssh`, "
        "`atelier config-ssh`); default: the host of the API URL they use.",
    )
    ssh_host_key: Path | None = Field(
        None,
        description="The gateway's private host key; default <data_dir>/ssh_host_ed25519_key, "
        "made (0600) on first start.",
    )
    # -- end of SSH gateway settings ---------------------------------------------------

    @field_validator("insecure_registries", mode="before")
    @classmethod
    def _split_registries(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # -- derived paths -------------------------------------------------------
    @cached_property
    def templates_dir(self) -> Path:
        return self.data_dir / "templates"

    @cached_property
    def oci_dir(self) -> Path:
        """The one OCI image layout every pulled or imported template shares."""
        return self.data_dir / "oci"

    @cached_property
    def agent_runtime_dir(self) -> Path:
        """Self-contained interpreters the agent runs on, one per Python version."""
        return self.data_dir / "agent-runtime"

    @cached_property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    @cached_property
    def runsc_root(self) -> Path:
        return self.data_dir / "runsc"

    @cached_property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token"

    @cached_property
    def server_log_file(self) -> Path:
        return self.data_dir / "server.log"

    @cached_property
    def server_pid_file(self) -> Path:
        return self.data_dir / "server.pid"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'atelier.db'}"
