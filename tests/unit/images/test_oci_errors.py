"""skopeo failures as Atelier errors; credentials kept out of argv, logs and messages."""

from __future__ import annotations

import base64
import json
import stat
import sys

import pytest

from atelier.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RuntimeFailure,
    ServiceUnavailable,
)
from atelier.images.skopeo import (
    Credentials,
    auth_file,
    classify_error,
    parse_credentials,
    run_tool,
    scrub,
)


def fatal(msg: str) -> str:
    escaped = msg.replace('"', '\\"')
    return f'time="2026-01-01T00:00:00Z" level=fatal msg="{escaped}"\n'


REG = "127.0.0.1:5000"


@pytest.mark.parametrize(
    ("stderr", "cls", "needle"),
    [
        (
            fatal(
                f"initializing source docker://{REG}/tiny:nope: reading manifest nope in "
                f"{REG}/tiny: manifest unknown: manifest unknown"
            ),
            NotFound,
            "not found",
        ),
        (
            fatal(
                f'Error parsing image name "docker://{REG}/x:1": reading manifest 1 in '
                f"{REG}/x: name unknown: repository name not known to registry"
            ),
            NotFound,
            "not found",
        ),
        (
            fatal(
                f'Error parsing image name "docker://{REG}/tiny:1": reading manifest 1 in '
                f"{REG}/tiny: unauthorized: authentication required"
            ),
            PermissionDenied,
            "credentials",
        ),
        (
            fatal(
                "initializing source docker://docker.io/library/nope:1: reading manifest 1 in "
                "docker.io/library/nope: requested access to the resource is denied"
            ),
            PermissionDenied,
            "do not exist",
        ),
        (
            fatal(
                f'Error parsing image name "docker://{REG}/tiny:1": pinging container registry '
                f'{REG}: Get "https://{REG}/v2/": dial tcp {REG}: connect: connection refused'
            ),
            ServiceUnavailable,
            "cannot reach registry",
        ),
        (
            fatal(
                'pinging container registry ghcr.io: Get "https://ghcr.io/v2/": dial tcp: '
                "lookup ghcr.io on 10.0.0.1:53: no such host"
            ),
            ServiceUnavailable,
            "ATELIER_REGISTRY_MIRRORS",
        ),
        (
            fatal(
                f'pinging container registry {REG}: Get "https://{REG}/v2/": '
                "http: server gave HTTP response to HTTPS client"
            ),
            ServiceUnavailable,
            "ATELIER_INSECURE_REGISTRIES",
        ),
        (
            fatal(
                f'pinging container registry {REG}: Get "https://{REG}/v2/": x509: '
                "certificate signed by unknown authority"
            ),
            ServiceUnavailable,
            "TLS certificate",
        ),
        (
            fatal("Invalid source name docker://A//b: invalid reference format"),
            InvalidRequest,
            "invalid image reference",
        ),
        (fatal("writing blob: no space left on device"), RuntimeFailure, "no space left"),
        ("", RuntimeFailure, "(no output)"),
    ],
)
def test_classify(stderr: str, cls: type[Exception], needle: str) -> None:
    err = classify_error(stderr, f"{REG}/tiny:1", REG)
    assert type(err) is cls
    assert needle in err.message
    assert err.details["image"] == f"{REG}/tiny:1"
    assert "level=fatal" not in err.message
    assert "Error parsing image name" not in err.message


def test_archive_errors() -> None:
    missing = classify_error(
        fatal("opening file `/x.tar`: open /x.tar: no such file or directory"), "/x.tar"
    )
    assert isinstance(missing, NotFound)
    broken = classify_error(fatal("loading index: archive/tar: invalid tar header"), "/x.tar")
    assert isinstance(broken, InvalidRequest)
    assert "registry" not in broken.details


def test_parse_credentials() -> None:
    assert parse_credentials(None) is None
    assert parse_credentials("") is None
    creds = parse_credentials("alice:s3:cret")
    assert creds == Credentials("alice", "s3:cret")
    assert "s3:cret" not in repr(creds)
    for bad in ("alice", ":x", "alice:"):
        with pytest.raises(InvalidRequest) as err:
            parse_credentials(bad)
        assert bad not in err.value.message or bad == "alice"


def test_scrub_every_form_of_the_secret() -> None:
    creds = Credentials("alice", "hunter2")
    b64 = base64.b64encode(b"alice:hunter2").decode()
    text = f"auth alice:hunter2 header Basic {b64} token hunter2 user alice"
    out = scrub(text, creds)
    assert "hunter2" not in out
    assert b64 not in out
    assert "user alice" in out
    assert scrub(text, None) == text


def test_auth_file_is_private_and_removed() -> None:
    with auth_file(None, REG) as none:
        assert none is None
    creds = Credentials("alice", "hunter2")
    with auth_file(creds, REG) as path:
        assert path is not None
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = json.loads(path.read_text())
        assert base64.b64decode(data["auths"][REG]["auth"]) == b"alice:hunter2"
    assert not path.exists()
    assert not path.parent.exists()


def test_run_tool_streams_lines_and_captures_stderr() -> None:
    lines: list[str] = []
    code = "import sys; print('Copying blob a'); print('Copying config b'); sys.stderr.write('e')"
    res = run_tool([sys.executable, "-c", code], timeout=30, on_line=lines.append)
    assert res.returncode == 0
    assert lines == ["Copying blob a", "Copying config b"]
    assert res.stderr == "e"


def test_run_tool_timeout_kills() -> None:
    with pytest.raises(RuntimeFailure, match="timed out"):
        run_tool([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_run_tool_missing_binary() -> None:
    with pytest.raises(ServiceUnavailable, match="apt-get install"):
        run_tool(["atelier-no-such-tool", "x"], timeout=5)
