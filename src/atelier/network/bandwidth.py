"""Per-sandbox bandwidth limits with ``tc`` (iproute2) on the sandbox's veth pair.

A sandbox's traffic crosses exactly one veth pair, so each direction is
shaped at the pair's sending end, where the kernel queues packets:

* **ingress** (to the sandbox, its downloads): a token-bucket filter (``tbf``)
  as the root qdisc of the *host* end (``atl<hash>``), whose transmit queue
  feeds the sandbox;
* **egress** (from the sandbox, its uploads): a ``tbf`` as the root qdisc of
  the *sandbox* end (``eth0`` in the sandbox's namespace), whose transmit
  queue carries everything gVisor's netstack sends (runsc writes frames to
  it through a packet socket, which passes through the qdisc layer).

Shaping (queueing to a rate) rather than policing (dropping above it) keeps
TCP smooth, and needs nothing but the ``sch_tbf`` scheduler. The qdiscs
belong to the veth devices: deleting the pair (teardown) deletes them, so
there is nothing extra to leak. ``apply`` is idempotent (``qdisc replace``)
and removes a limit the policy no longer has. See ADR 0021.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .shell import run

__all__ = ["Limits", "apply", "burst_bytes", "qdiscs", "tbf_argv"]

LATENCY_MS = 50  # how long a packet may wait in the bucket's queue before it is dropped
_MIN_BURST = 32 * 1024  # at least a few full-size frames (and HZ granularity)


@dataclass(frozen=True, slots=True)
class Limits:
    """Mbit/s each way; None: unlimited."""

    egress_mbit: int | None = None  # sandbox -> outside (upload)
    ingress_mbit: int | None = None  # outside -> sandbox (download)

    @property
    def any(self) -> bool:
        return self.egress_mbit is not None or self.ingress_mbit is not None


def burst_bytes(mbit: int) -> int:
    """Bucket size: about 10 ms at the rate, never less than :data:`_MIN_BURST`."""
    return max(_MIN_BURST, mbit * 1_000_000 // 8 // 100)


def tbf_argv(dev: str, mbit: int, netns: str | None = None) -> list[str]:
    where = ["-n", netns] if netns else []
    return [
        "tc", *where, "qdisc", "replace", "dev", dev, "root", "tbf",
        "rate", f"{mbit}mbit", "burst", str(burst_bytes(mbit)), "latency", f"{LATENCY_MS}ms",
    ]  # fmt: skip


async def _set(dev: str, mbit: int | None, netns: str | None) -> None:
    if mbit is not None:
        await run(tbf_argv(dev, mbit, netns))
        return
    current = await qdiscs(dev, netns)
    if any(q.get("kind") == "tbf" and q.get("root") for q in current):
        where = ["-n", netns] if netns else []
        await run(["tc", *where, "qdisc", "del", "dev", dev, "root"], check=False)


async def apply(host_if: str, netns: str, guest_if: str, limits: Limits) -> None:
    """Set (or clear) both directions' limits on the pair."""
    await _set(host_if, limits.ingress_mbit, None)
    await _set(guest_if, limits.egress_mbit, netns)


async def qdiscs(dev: str, netns: str | None = None) -> list[dict[str, Any]]:
    """``tc -j -s qdisc show dev`` (with byte counters); [] if the device is gone."""
    where = ["-n", netns] if netns else []
    res = await run(["tc", *where, "-j", "-s", "qdisc", "show", "dev", dev], check=False)
    if not res.ok:
        return []
    try:
        data = json.loads(res.stdout or "[]")
    except ValueError:
        return []
    return data if isinstance(data, list) else []
