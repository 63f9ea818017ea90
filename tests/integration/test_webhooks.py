"""Push webhooks against a real server, signed (or not) the way each git host
signs them: GitHub, GitLab, Gitea, Forgejo and Bitbucket Cloud.

The pushes here name another branch than the prebuilt one, so a verified
delivery is acknowledged and ignored without building anything; the build
path itself is in test_prebuilds.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from server_harness import ServerProcess, new_server, shut_down

from atelier.images.store import TemplateInfo

pytestmark = [pytest.mark.integration]

SECRET = "webhook-test-secret"
SHA = "3" * 40
Headers = Callable[[bytes, str, str], dict[str, str]]


def _hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _github(body: bytes, delivery: str, secret: str) -> dict[str, str]:
    return {
        "X-Hub-Signature-256": f"sha256={_hex(secret, body)}",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
    }


def _gitlab(body: bytes, delivery: str, secret: str) -> dict[str, str]:
    return {
        "X-Gitlab-Token": secret,
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Event-UUID": delivery,
    }


def _gitea(body: bytes, delivery: str, secret: str) -> dict[str, str]:
    return {
        "X-Gitea-Signature": _hex(secret, body),
        "X-Gitea-Event": "push",
        "X-Gitea-Delivery": delivery,
    }


def _forgejo(body: bytes, delivery: str, secret: str) -> dict[str, str]:
    return {
        "X-Forgejo-Signature": _hex(secret, body),
        "X-Forgejo-Event": "push",
        "X-Forgejo-Delivery": delivery,
    }


def _bitbucket(body: bytes, delivery: str, secret: str) -> dict[str, str]:
    return {
        "X-Hub-Signature": f"sha256={_hex(secret, body)}",
        "X-Event-Key": "repo:push",
        "X-Request-UUID": delivery,
    }


def _push(provider: str, branch: str) -> bytes:
    if provider == "bitbucket":
        new = {"type": "branch", "name": branch, "target": {"hash": SHA}}
        return json.dumps({"push": {"changes": [{"new": new, "old": None}]}}).encode()
    return json.dumps({"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": SHA}).encode()


PROVIDERS: dict[str, Headers] = {
    "github": _github,
    "gitlab": _gitlab,
    "gitea": _gitea,
    "forgejo": _forgejo,
    "bitbucket": _bitbucket,
}


@pytest.fixture(scope="module")
def server(base_template: TemplateInfo) -> Iterator[ServerProcess]:
    srv = new_server(base_template)
    srv.start()
    try:
        yield srv
    finally:
        shut_down(srv)


@pytest.fixture
def prebuild(server: ServerProcess, request: pytest.FixtureRequest) -> Iterator[str]:
    provider = request.node.callspec.params["provider"]
    with server.client() as http:
        res = http.post(
            "/v1/prebuilds",
            json={
                "repo": "http://127.0.0.1:9/team/app.git",  # never contacted
                "branch": "main",
                "webhook_provider": provider,
                "webhook_secret": SECRET,
            },
        )
        assert res.status_code == 201, res.text
        yield str(res.json()["id"])
        assert http.get(f"/v1/prebuilds/{res.json()['id']}/builds").json() == {"builds": []}
        http.delete(f"/v1/prebuilds/{res.json()['id']}")


def _deliver(
    server: ServerProcess, provider: str, prebuild_id: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/webhooks/{provider}/{prebuild_id}",
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=60,
    )


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_signed_delivery_is_accepted_once(
    server: ServerProcess, prebuild: str, provider: str
) -> None:
    body = _push(provider, "feature")  # not the prebuilt branch: acknowledged, not built
    delivery = str(uuid.uuid4())
    headers = PROVIDERS[provider](body, delivery, SECRET)
    first = _deliver(server, provider, prebuild, body, headers)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "ignored"
    replay = _deliver(server, provider, prebuild, body, headers)
    assert replay.status_code == 409 and replay.json()["code"] == "webhook_replayed"


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_badly_signed_and_unsigned_deliveries_are_refused(
    server: ServerProcess, prebuild: str, provider: str
) -> None:
    body = _push(provider, "main")
    wrong = PROVIDERS[provider](body, str(uuid.uuid4()), "not-the-secret")
    res = _deliver(server, provider, prebuild, body, wrong)
    assert res.status_code == 401 and res.json()["code"] == "webhook_signature_invalid"
    unsigned = {k: v for k, v in wrong.items() if "Signature" not in k and "Token" not in k}
    res = _deliver(server, provider, prebuild, body, unsigned)
    assert res.status_code == 401 and res.json()["code"] == "webhook_signature_invalid"
    if provider != "gitlab":  # a shared token signs no body: nothing to tamper with
        # a valid signature over another body does not carry over
        tampered = body.replace(SHA.encode(), b"4" * 40)
        signed_other = PROVIDERS[provider](body, str(uuid.uuid4()), SECRET)
        res = _deliver(server, provider, prebuild, tampered, signed_other)
        assert res.status_code == 401 and res.json()["code"] == "webhook_signature_invalid"
