"""Preview building blocks: signed grants, the key file, host parsing, proxy headers."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from atelier.api.preview.http import Forwarding, request_headers, response_headers
from atelier.api.preview.signing import PreviewSigner, load_or_create_key
from atelier.api.preview.state import parse_preview_host, visibility_of

KEY = b"k" * 32


def test_link_valid_until_it_expires() -> None:
    signer = PreviewSigner(KEY)
    grant = signer.issue("l", "sb-1", 3000, ttl_seconds=60)
    expires = signer.verify(grant, "sb-1", 3000)
    assert expires is not None and time.time() < expires <= time.time() + 61
    assert signer.verify(grant, "sb-1", 3000, now=expires - 1) == expires
    assert signer.verify(grant, "sb-1", 3000, now=expires) is None
    assert signer.verify(grant, "sb-1", 3000, now=expires + 3600) is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda g: g[:-2] + ("AA" if not g.endswith("AA") else "BB"),  # signature
        lambda g: g.replace(g.split(".")[1], str(int(g.split(".")[1]) + 3600)),  # expiry
        lambda g: "s" + g[1:],  # kind
        lambda g: g + ".x",
        lambda g: "",
        lambda g: "l.abc.def",
    ],
)
def test_tampered_grants_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    signer = PreviewSigner(KEY)
    grant = signer.issue("l", "sb-1", 3000, ttl_seconds=60)
    assert signer.verify(mutate(grant), "sb-1", 3000) is None


def test_grant_is_bound_to_sandbox_port_and_key() -> None:
    signer = PreviewSigner(KEY)
    grant = signer.issue("s", "sb-1", 3000, ttl_seconds=60)
    assert signer.verify(grant, "sb-1", 3000) is not None
    assert signer.verify(grant, "sb-2", 3000) is None
    assert signer.verify(grant, "sb-1", 3001) is None
    assert PreviewSigner(b"x" * 32).verify(grant, "sb-1", 3000) is None


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "preview-key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key


def test_parse_preview_host() -> None:
    assert parse_preview_host("3000-sb-1a2b.preview.test", "preview.test") == ("sb-1a2b", 3000)
    assert parse_preview_host("3000-sb-1a2b.preview.test:8080", "preview.test:8080") == (
        "sb-1a2b",
        3000,
    )
    assert parse_preview_host("3000-SB-1A2B.Preview.Test", "preview.test") == ("sb-1a2b", 3000)
    assert parse_preview_host("preview.test", "preview.test") is None
    assert parse_preview_host("127.0.0.1:8080", "preview.test") is None
    assert parse_preview_host("99999-sb-1.preview.test", "preview.test") is None
    assert parse_preview_host("x-sb-1.preview.test", "preview.test") is None
    assert parse_preview_host("3000-sb-1.evilpreview.test", "preview.test") is None
    assert parse_preview_host("3000-sb-1.preview.test", None) is None


def test_visibility_defaults_to_private() -> None:
    assert visibility_of({}, 3000) == "private"
    assert visibility_of({"atelier.port.3000": "public"}, 3000) == "public"
    assert visibility_of({"atelier.port.3000": "public"}, 3001) == "private"


FWD = Forwarding(
    client_ip="10.0.0.9", proto="https", host="a.test", prefix="/preview/sb-1/3000", port=3000
)


def test_request_headers_drop_hop_by_hop_and_set_forwarded() -> None:
    headers = [
        (b"Host", b"a.test"),
        (b"Connection", b"keep-alive, X-Custom-Hop"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Custom-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"TE", b"trailers"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"Authorization", b"Bearer secret"),
        (b"X-Forwarded-For", b"1.2.3.4"),
        (b"X-Forwarded-Host", b"spoofed"),
        (b"Cookie", b"a=1; atelier_preview=l.1.sig; b=2"),
        (b"Accept", b"text/html"),
        (b"Expect", b"100-continue"),
    ]
    out = request_headers(
        headers, FWD, drop=[b"authorization"], strip_cookie=b"atelier_preview", chunked=True
    )
    got = dict(out)
    assert len(got) == len(out)  # no duplicates
    assert got == {
        b"host": b"localhost:3000",
        b"cookie": b"a=1; b=2",
        b"accept": b"text/html",
        b"x-forwarded-for": b"1.2.3.4, 10.0.0.9",
        b"x-forwarded-proto": b"https",
        b"x-forwarded-host": b"a.test",
        b"x-forwarded-prefix": b"/preview/sb-1/3000",
        b"transfer-encoding": b"chunked",
    }


def test_request_headers_keep_authorization_unless_told() -> None:
    out = dict(request_headers([(b"authorization", b"Basic app")], FWD))
    assert out[b"authorization"] == b"Basic app"
    only_ours = dict(
        request_headers([(b"cookie", b"atelier_preview=x")], FWD, strip_cookie=b"atelier_preview")
    )
    assert b"cookie" not in only_ours


def test_response_headers() -> None:
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"5"),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Location", b"/login?next=/"),
        (b"Set-Cookie", b"s=1; Path=/"),
    ]
    assert response_headers(headers, FWD) == [
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"location", b"/preview/sb-1/3000/login?next=/"),
        (b"set-cookie", b"s=1; Path=/"),
    ]
    host_based = Forwarding(client_ip=None, proto="http", host="h", prefix="", port=3000)
    assert response_headers([(b"Location", b"/x")], host_based) == [(b"location", b"/x")]
    assert response_headers([(b"Location", b"//other/x")], FWD) == [(b"location", b"//other/x")]
    assert response_headers([(b"Location", b"http://e/x")], FWD) == [(b"location", b"http://e/x")]
