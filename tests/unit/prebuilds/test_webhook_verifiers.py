"""The four webhook verifiers, with deliveries signed in the test by each host's
documented algorithm (HMAC-SHA256 of the raw body, or GitLab's shared token)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from atelier.core.prebuilds.webhooks import sign, verify_delivery
from atelier.errors import InvalidRequest, WebhookSignatureInvalid

SECRET = "It's a Secret to Everybody"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _push(branch: str = "main", after: str = SHA) -> bytes:
    return json.dumps({"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": after}).encode()


def _bitbucket_push(branch: str = "main", sha: str = SHA) -> bytes:
    change = {"new": {"type": "branch", "name": branch, "target": {"hash": sha}}, "old": None}
    return json.dumps({"push": {"changes": [change]}}).encode()


def github(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "x-hub-signature-256": "sha256=" + _hmac_hex(secret, body),
        "x-github-event": "push",
        "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }


def gitlab(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "x-gitlab-token": secret,
        "x-gitlab-event": "Push Hook",
        "x-gitlab-event-uuid": "13792a34-cac6-4fda-95a8-c58e00a3954e",
    }


def gitea(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "x-gitea-signature": _hmac_hex(secret, body),
        "x-gitea-event": "push",
        "x-gitea-delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473",
    }


def forgejo(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "x-forgejo-signature": _hmac_hex(secret, body),
        "x-forgejo-event": "push",
        "x-forgejo-delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead474",
        "x-gitea-signature": _hmac_hex(secret, body),
        "x-gitea-event": "push",
        "x-gitea-delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead474",
    }


def bitbucket(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "x-hub-signature": "sha256=" + _hmac_hex(secret, body),
        "x-event-key": "repo:push",
        "x-request-uuid": "{3b2c7a5e-1d4e-4a4f-9a2b-6c1e8f0d2a11}",
    }


SIGNERS = {
    "github": (github, _push),
    "gitlab": (gitlab, _push),
    "gitea": (gitea, _push),
    "forgejo": (forgejo, _push),
    "bitbucket": (bitbucket, _bitbucket_push),
}


def test_sign_is_the_rfc_4231_hmac_sha256() -> None:
    # RFC 4231 test case 2
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign("Jefe", b"what do ya want for nothing?") == expected


@pytest.mark.parametrize("provider", sorted(SIGNERS))
def test_a_signed_push_is_accepted_with_its_branch_and_commit(provider: str) -> None:
    headers_for, body_for = SIGNERS[provider]
    body = body_for("main", SHA)
    event = verify_delivery(provider, headers_for(body), body, SECRET)
    assert event.branches == {"main": SHA}
    assert event.delivery_id
    assert event.provider == provider


@pytest.mark.parametrize("provider", sorted(SIGNERS))
def test_a_delivery_signed_with_another_secret_is_refused(provider: str) -> None:
    headers_for, body_for = SIGNERS[provider]
    body = body_for("main", SHA)
    with pytest.raises(WebhookSignatureInvalid) as err:
        verify_delivery(provider, headers_for(body, "not the secret"), body, SECRET)
    assert err.value.status == 401 and err.value.code == "webhook_signature_invalid"


@pytest.mark.parametrize("provider", sorted(SIGNERS))
def test_a_tampered_body_is_refused(provider: str) -> None:
    headers_for, body_for = SIGNERS[provider]
    signed = body_for("main", SHA)
    tampered = body_for("main", "f" * 40)
    if provider == "gitlab":  # a shared token does not cover the body: nothing to detect
        assert verify_delivery(provider, headers_for(signed), tampered, SECRET).branches
        return
    with pytest.raises(WebhookSignatureInvalid):
        verify_delivery(provider, headers_for(signed), tampered, SECRET)


@pytest.mark.parametrize("provider", sorted(SIGNERS))
def test_an_unsigned_delivery_is_refused(provider: str) -> None:
    headers_for, body_for = SIGNERS[provider]
    body = body_for("main", SHA)
    headers = {
        k: v for k, v in headers_for(body).items() if "signature" not in k and "token" not in k
    }
    with pytest.raises(WebhookSignatureInvalid):
        verify_delivery(provider, headers, body, SECRET)


def test_prefixes_are_checked() -> None:
    body = _push()
    bare = {**github(body), "x-hub-signature-256": _hmac_hex(SECRET, body)}
    with pytest.raises(WebhookSignatureInvalid):
        verify_delivery("github", bare, body, SECRET)
    sha1 = {**bitbucket(body), "x-hub-signature": "sha1=" + _hmac_hex(SECRET, body)}
    with pytest.raises(WebhookSignatureInvalid):
        verify_delivery("bitbucket", sha1, body, SECRET)


def test_forgejo_checks_its_own_header_first() -> None:
    body = _push()
    headers = {**forgejo(body), "x-forgejo-signature": "00" * 32}  # a good Gitea one stays
    with pytest.raises(WebhookSignatureInvalid):
        verify_delivery("forgejo", headers, body, SECRET)


def test_deletions_tags_and_other_events_push_no_branch() -> None:
    deleted = _push("main", "0" * 40)
    assert verify_delivery("github", github(deleted), deleted, SECRET).branches == {}
    tag = json.dumps({"ref": "refs/tags/v1", "after": SHA}).encode()
    assert verify_delivery("github", github(tag), tag, SECRET).branches == {}
    ping = b'{"zen": "Keep it logically awesome."}'
    headers = {**github(ping), "x-github-event": "ping"}
    event = verify_delivery("github", headers, ping, SECRET)
    assert not event.is_push and event.event == "ping"
    bb_deleted = json.dumps({"push": {"changes": [{"new": None}]}}).encode()
    assert verify_delivery("bitbucket", bitbucket(bb_deleted), bb_deleted, SECRET).branches == {}


def test_a_delivery_without_an_id_or_json_is_a_bad_request() -> None:
    body = _push()
    headers = github(body)
    del headers["x-github-delivery"]
    with pytest.raises(InvalidRequest):
        verify_delivery("github", headers, body, SECRET)
    junk = b"not json"
    with pytest.raises(InvalidRequest):
        verify_delivery("gitea", gitea(junk), junk, SECRET)
    with pytest.raises(InvalidRequest):
        verify_delivery("sourcehut", {}, body, SECRET)


def test_an_empty_secret_verifies_nothing() -> None:
    body = _push()
    with pytest.raises(WebhookSignatureInvalid):
        verify_delivery("gitlab", gitlab(body, ""), body, "")
