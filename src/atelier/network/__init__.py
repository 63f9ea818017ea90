"""Sandbox networking: per-sandbox network namespaces, veth pairs, an IPAM,
and an egress policy enforced in nftables (see docs/network.md).

``policy``   NetworkPolicy (mode none | egress | open, allow/deny, bandwidth)
``ipam``     subnet leases from a pool, persisted with a lock
``netns``    the namespace and veth pair (``ip``)
``firewall`` the nftables table, generated as ``nft -f`` scripts
``dns``      resolvers for sandboxes, resolving policy domains
``bandwidth`` per-direction rate limits (``tc`` tbf on the veth pair)
``manager``  NetworkManager: setup / teardown / reconcile / info
"""

from .ipam import Ipam, Lease
from .manager import NetworkInfo, NetworkManager
from .policy import MODES, NetworkPolicy

__all__ = ["MODES", "Ipam", "Lease", "NetworkInfo", "NetworkManager", "NetworkPolicy"]
