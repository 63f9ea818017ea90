"""Running skopeo and umoci: credentials, progress, and their errors as ours.

Credentials never appear on a command line (other host users can read
``/proc/*/cmdline``) nor in a log or an error: they go to skopeo in a private
temporary auth file, and every message derived from its output is scrubbed.
Without credentials skopeo runs with ``--src-no-creds``, so an operator's own
registry logins (``~/.docker/config.json``) never serve a user's pull.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    AtelierError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RuntimeFailure,
    ServiceUnavailable,
)

__all__ = [
    "Credentials",
    "ToolResult",
    "auth_file",
    "classify_error",
    "parse_credentials",
    "run_tool",
    "scrub",
]

_KEEP_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    secret: str

    def secrets(self) -> list[str]:
        """Every form the secret could be echoed in (to scrub)."""
        pair = f"{self.username}:{self.secret}"
        return [pair, base64.b64encode(pair.encode()).decode(), self.secret]

    def __repr__(self) -> str:  # never print the secret by accident
        return f"Credentials(username={self.username!r}, secret='***')"


def parse_credentials(value: str | None) -> Credentials | None:
    """``"user:token"`` -> Credentials (None for None/empty); InvalidRequest otherwise."""
    if not value:
        return None
    user, sep, secret = value.partition(":")
    if not sep or not user or not secret:
        raise InvalidRequest("registry credentials must look like USER:TOKEN (or USER:PASSWORD)")
    return Credentials(user, secret)


def scrub(text: str, creds: Credentials | None) -> str:
    """``text`` with every form of the credentials' secret replaced by ``***``."""
    if creds is None:
        return text
    for secret in sorted(creds.secrets(), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def auth_file(creds: Credentials | None, registry: str) -> Iterator[Path | None]:
    """A private auth file (containers-auth.json) for ``registry``, removed after use."""
    if creds is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="atelier-auth-") as tmp:
        path = Path(tmp) / "auth.json"
        pair = f"{creds.username}:{creds.secret}".encode()
        body = {"auths": {registry: {"auth": base64.b64encode(pair).decode()}}}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh)
        yield path


@dataclass(frozen=True, slots=True)
class ToolResult:
    returncode: int
    stdout: bytes
    stderr: str


def _env(tmpdir: Path | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    env.update({k: os.environ[k] for k in _KEEP_ENV if k in os.environ})
    if tmpdir is not None:
        # skopeo buffers blobs in $TMPDIR (default /var/tmp): keep them on the data disk
        env["TMPDIR"] = str(tmpdir)
        env["HOME"] = str(tmpdir)  # no ~/.docker/config.json of the operator
    return env


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_tool(
    argv: Sequence[str],
    *,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    tmpdir: Path | None = None,
) -> ToolResult:
    """Run ``argv`` in its own process group; each stdout line goes to ``on_line``
    as it comes (progress). Killed (the whole group) on timeout or interrupt."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(tmpdir),
            start_new_session=True,
        )
    except OSError as exc:
        raise ServiceUnavailable(
            f"cannot run {argv[0]}: {exc.strerror} (install it: apt-get install {argv[0]})"
        ) from exc
    assert proc.stdout is not None and proc.stderr is not None
    out, err, pending = bytearray(), bytearray(), b""
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeFailure(f"{argv[0]} {argv[1]} timed out after {timeout:.0f} s")
                for key, _ in sel.select(timeout=min(left, 1.0)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    if key.fileobj is proc.stderr:
                        err += chunk
                        continue
                    out += chunk
                    if on_line is not None:
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            on_line(line.decode(errors="replace"))
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        _kill(proc)
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if on_line is not None and pending:
        on_line(pending.decode(errors="replace"))
    return ToolResult(rc, bytes(out), err.decode(errors="replace"))


_FATAL = re.compile(r'level=fatal msg="(.*)"\s*$', re.S)
_NOT_FOUND = (
    "manifest unknown",
    "name unknown",
    "not found",
    "no such image",
    "repository name not known",
)
_DENIED = (
    "unauthorized",
    "authentication required",
    "denied",
    "invalid username/password",
    "incorrect username or password",
    "403 forbidden",
)
_UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "connection reset",
    "tls handshake timeout",
    "context deadline exceeded",
    "dial tcp",
    "server misbehaving",
)
_BAD_REF = ("invalid reference format", "invalid source name", "error parsing image name")


# skopeo wraps every failure in what it was doing; the cause is what follows.
_CONTEXT = re.compile(
    r'^(?:Error parsing image name "[^"]*": |initializing source \S+: |'
    r"(?:reading|copying|writing) \w+(?: \S+)?: )+"
)


def _message(stderr: str) -> str:
    """The cause of a skopeo failure: its last ``level=fatal`` message, without
    the "Error parsing image name ..." / "initializing source ..." wrappers."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "(no output)"
    match = _FATAL.search(last)
    if match:
        last = match.group(1).replace('\\"', '"')
    return _CONTEXT.sub("", last.strip()) or last


def classify_error(stderr: str, what: str, registry: str | None = None) -> AtelierError:
    """A skopeo failure as the matching Atelier error.

    ``what`` names the image (or archive) for the message; ``registry`` is the
    registry that was contacted (None for archives). Callers scrub ``stderr``.
    """
    detail = _message(stderr)
    low = detail.lower()
    where = f" ({registry})" if registry else ""
    details = {"image": what, "detail": detail}
    if registry:
        details["registry"] = registry
    if "http response to https client" in low:
        return ServiceUnavailable(
            f"registry {registry} speaks plain HTTP, not HTTPS: add it to "
            f"ATELIER_INSECURE_REGISTRIES if that is intended ({detail})",
            details=details,
        )
    if "x509:" in low or "certificate" in low:
        return ServiceUnavailable(
            f"cannot verify the TLS certificate of registry {registry}: {detail} "
            "(install its CA, or list it in ATELIER_INSECURE_REGISTRIES)",
            details=details,
        )
    if any(s in low for s in _DENIED):
        return PermissionDenied(
            f"registry{where} refused access to {what}: the credentials are missing or "
            "wrong, or do not grant access to this image (some registries also answer "
            f"so for images that do not exist) ({detail})",
            details=details,
        )
    if registry and any(s in low for s in _UNREACHABLE):
        return ServiceUnavailable(
            f"cannot reach registry {registry} for {what}: {detail} (is it up, and reachable "
            "from this host? air-gapped hosts: configure ATELIER_REGISTRY_MIRRORS)",
            details=details,
        )
    if any(s in low for s in _NOT_FOUND):
        return NotFound(f"image {what} not found{where}: {detail}", details=details)
    if any(s in low for s in _BAD_REF):
        return InvalidRequest(f"invalid image reference {what}: {detail}", details=details)
    if not registry and ("no such file" in low or "does not exist" in low):
        return NotFound(f"archive {what} not found: {detail}", details=details)
    if not registry and any(
        s in low for s in ("archive/tar", "unexpected eof", "invalid tar", "gzip")
    ):
        return InvalidRequest(f"{what} is not a valid image archive: {detail}", details=details)
    return RuntimeFailure(f"copying {what} failed: {detail}", details=details)
