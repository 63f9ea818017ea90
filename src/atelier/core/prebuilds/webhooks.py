"""Push webhooks: is a delivery authentic, is it new, and what did it push?

Each git host proves a delivery its own way (all compared in constant time,
over the exact bytes received, before the body is parsed):

* github: ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the body;
  event ``X-GitHub-Event: push``; delivery id ``X-GitHub-Delivery``.
* gitlab: ``X-Gitlab-Token``, the shared secret itself; event
  ``X-Gitlab-Event: Push Hook``; delivery id ``X-Gitlab-Event-UUID`` (else
  ``Idempotency-Key``).
* gitea, forgejo: ``X-Forgejo-Signature`` (else ``X-Gitea-Signature``), the
  bare hex HMAC-SHA256 of the body; event ``X-Forgejo-Event``/``X-Gitea-Event:
  push``; delivery id ``X-Forgejo-Delivery``/``X-Gitea-Delivery``.
* bitbucket (Cloud): ``X-Hub-Signature: sha256=<hex>``, the HMAC-SHA256 of the
  body; event ``X-Event-Key: repo:push``; delivery id ``X-Request-UUID``.

GitHub, GitLab and Gitea/Forgejo send ``{"ref": "refs/heads/<branch>",
"after": "<sha>"}`` (``after`` all zeros when a branch is deleted);
Bitbucket Cloud sends ``{"push": {"changes": [{"new": {"type": "branch",
"name": ..., "target": {"hash": ...}}}]}}`` (``new`` null when deleted).
The signatures cover no timestamp, so a captured delivery would verify again:
the caller refuses a delivery id it has seen (``store.record_delivery``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import InvalidRequest, WebhookSignatureInvalid

__all__ = ["PushEvent", "sign", "verify_delivery"]

_SHA = re.compile(r"^[0-9a-f]{40}$")
_ZERO = "0" * 40
MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB


@dataclass(frozen=True, slots=True)
class PushEvent:
    """A verified delivery. ``branches``: branch → new head commit, for the
    branches the push created or moved (tags and deletions left out); empty for
    any other event (a ping, an issue...)."""

    provider: str
    delivery_id: str
    event: str
    branches: dict[str, str] = field(default_factory=dict)

    @property
    def is_push(self) -> bool:
        return bool(self.branches)


def sign(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` under ``secret`` (what the hosts send)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _refuse(provider: str, why: str) -> WebhookSignatureInvalid:
    return WebhookSignatureInvalid(
        f"{provider} webhook refused: {why}", details={"provider": provider}
    )


def _check_hmac(provider: str, given: str | None, secret: str, body: bytes, prefix: str) -> None:
    if not given:
        raise _refuse(provider, "the delivery is not signed")
    if prefix:
        if not given.startswith(prefix):
            raise _refuse(provider, f"the signature does not start with {prefix!r}")
        given = given[len(prefix) :]
    if not hmac.compare_digest(given.strip().lower().encode(), sign(secret, body).encode()):
        raise _refuse(provider, "the signature does not match the body and secret")


def _header(headers: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None


def _json(provider: str, body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(f"{provider} webhook: the body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{provider} webhook: the body is not a JSON object")
    return data


def _ref_after(data: Mapping[str, Any]) -> dict[str, str]:
    ref, after = data.get("ref"), data.get("after")
    if not isinstance(ref, str) or not ref.startswith("refs/heads/"):
        return {}
    if not isinstance(after, str) or not _SHA.match(after) or after == _ZERO:
        return {}
    return {ref[len("refs/heads/") :]: after}


def _bitbucket_changes(data: Mapping[str, Any]) -> dict[str, str]:
    branches: dict[str, str] = {}
    changes = (data.get("push") or {}).get("changes") or []
    for change in changes if isinstance(changes, list) else []:
        new = change.get("new") if isinstance(change, dict) else None
        if not isinstance(new, dict) or new.get("type") != "branch":
            continue
        name, target = new.get("name"), new.get("target") or {}
        sha = target.get("hash") if isinstance(target, dict) else None
        if isinstance(name, str) and isinstance(sha, str) and _SHA.match(sha):
            branches[name] = sha
    return branches


def verify_delivery(
    provider: str, headers: Mapping[str, str], body: bytes, secret: str
) -> PushEvent:
    """Check one delivery against the prebuild's ``secret``; what it pushed.

    ``headers`` by lower-case name. Raises WebhookSignatureInvalid (401) for a
    missing or wrong signature/token, InvalidRequest (400) for an unknown
    provider, a missing delivery id or a body that is not JSON.
    """
    if len(body) > MAX_BODY:
        raise InvalidRequest(f"{provider} webhook: the body is over {MAX_BODY} bytes")
    if not secret:
        raise _refuse(provider, "this prebuild has no webhook secret")
    if provider == "github":
        _check_hmac(provider, headers.get("x-hub-signature-256"), secret, body, "sha256=")
        event = headers.get("x-github-event", "")
        delivery = headers.get("x-github-delivery")
    elif provider == "gitlab":
        token = headers.get("x-gitlab-token")
        if not token:
            raise _refuse(provider, "the delivery has no X-Gitlab-Token")
        if not hmac.compare_digest(token.encode(), secret.encode()):
            raise _refuse(provider, "the X-Gitlab-Token does not match")
        event = headers.get("x-gitlab-event", "")
        delivery = _header(headers, "x-gitlab-event-uuid", "idempotency-key")
    elif provider in ("gitea", "forgejo"):
        # Forgejo sends both names; when its own is there, it is the one checked
        given = _header(headers, "x-forgejo-signature", "x-gitea-signature")
        _check_hmac(provider, given, secret, body, "")
        event = _header(headers, "x-forgejo-event", "x-gitea-event") or ""
        delivery = _header(headers, "x-forgejo-delivery", "x-gitea-delivery")
    elif provider == "bitbucket":
        _check_hmac(provider, headers.get("x-hub-signature"), secret, body, "sha256=")
        event = headers.get("x-event-key", "")
        delivery = headers.get("x-request-uuid")
    else:
        raise InvalidRequest(f"unknown webhook provider {provider!r}")
    if not delivery:
        raise InvalidRequest(f"{provider} webhook: the delivery has no delivery id header")
    data = _json(provider, body)
    branches: dict[str, str] = {}
    if provider == "bitbucket":
        if event == "repo:push":
            branches = _bitbucket_changes(data)
    elif event in ("push", "Push Hook"):
        branches = _ref_after(data)
    return PushEvent(provider=provider, delivery_id=delivery[:200], event=event, branches=branches)
