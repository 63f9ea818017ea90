"""The SSH gateway: ``ssh <sandbox-id>@<host> -p 2222`` into sandboxes (docs/ssh.md)."""

from __future__ import annotations

from ..config import Settings
from ..store.db import Database
from ..store.repository import Repository
from ..store.ssh_keys import SSHKeyRepository
from .keys import SSHKeyService
from .server import GatewayInfo, SSHGateway

__all__ = ["GatewayInfo", "SSHGateway", "SSHKeyService", "start_gateway"]


async def start_gateway(
    settings: Settings, db: Database, repo: Repository, sandboxes: object
) -> SSHGateway:
    """The key service, and the listener if ``ssh_port`` is set (``await gw.close()`` at exit)."""
    gateway = SSHGateway(settings, SSHKeyService(SSHKeyRepository(db)), sandboxes, repo)
    await gateway.start()
    return gateway
