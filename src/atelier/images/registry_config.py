"""Image references, registry mirrors and insecure registries (pure functions).

An image reference is normalized the way Docker does it: a bare name is on
Docker Hub (``alpine:3`` -> ``docker.io/library/alpine:3``), the first path
component is a registry only if it has a ``.`` or a ``:`` or is
``localhost``, and a reference without tag or digest means ``:latest``.

Mirrors (``ATELIER_REGISTRY_MIRRORS``) rewrite a normalized repository name
before anything is pulled, so an air-gapped host never asks the outside
world::

    {"registry.example.com/*": "mirror.local:5000/*",
     "docker.io/*": "mirror.local:5000/dockerhub/*",
     "ghcr.io/acme/tool": "mirror.local:5000/tools/acme-tool"}

A pattern is either an exact repository (``host/path/name``) or a prefix
ending in ``/*``; its target then ends in ``/*`` too, and what the ``*``
matched is appended. The longest matching pattern wins; tag and digest are
kept as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ..errors import InvalidRequest

__all__ = [
    "DEFAULT_REGISTRY",
    "ImageRef",
    "apply_mirrors",
    "is_insecure",
    "parse_reference",
    "validate_mirrors",
]

DEFAULT_REGISTRY = "docker.io"
_LOCAL_TRANSPORTS = {"oci", "oci-archive", "docker-archive", "dir", "containers-storage"}
_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

# The grammar of github.com/distribution/reference, in Python regexes.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A normalized image reference: ``registry/repository[:tag][@digest]``."""

    registry: str  # "docker.io", "ghcr.io", "127.0.0.1:5000"
    repository: str  # "library/alpine"
    tag: str | None = None
    digest: str | None = None  # "sha256:..."

    @property
    def name(self) -> str:
        """``registry/repository`` (what mirrors match against)."""
        return f"{self.registry}/{self.repository}"

    @property
    def pull_spec(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag
        (registries do not take both)."""
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"

    def with_digest(self, digest: str) -> ImageRef:
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _invalid(ref: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"invalid image reference {ref!r}: {why}", details={"image": ref})


def parse_reference(ref: str) -> ImageRef:
    """Parse and normalize an image reference (``docker://`` prefix allowed).

    Raises InvalidRequest naming what is wrong.
    """
    text = ref.strip()
    if text.startswith("docker://"):
        text = text[len("docker://") :]
    if not text:
        raise _invalid(ref, "it is empty")
    if len(text) > 512:
        raise _invalid(ref, "it is longer than 512 characters")
    if "://" in text:
        raise _invalid(ref, "only registry references (docker://...) can be pulled")
    if text.split(":", 1)[0] in _LOCAL_TRANSPORTS:
        raise _invalid(ref, "image archives on disk are imported, not pulled (import_archive)")
    rest, digest = text, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST_RE.match(digest):
            raise _invalid(ref, f"{digest!r} is not a digest (algorithm:hex)")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:  # a colon after the last slash separates the tag
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise _invalid(ref, f"{tag!r} is not a valid tag")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
        if not _DOMAIN_RE.match(registry):
            raise _invalid(ref, f"{registry!r} is not a registry host[:port]")
    else:
        registry, repository = DEFAULT_REGISTRY, rest
    if registry in _HUB_ALIASES:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if not repository or not _PATH_RE.match(repository):
        raise _invalid(
            ref,
            "the repository must be lowercase letters, digits and separators (. _ - /)",
        )
    if len(f"{registry}/{repository}") > 255:
        raise _invalid(ref, "the repository name is longer than 255 characters")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, repository, tag, digest)


def _check_pattern(pattern: str, target: str) -> None:
    wild = pattern.endswith("/*")
    if wild != target.endswith("/*"):
        raise InvalidRequest(
            f"registry mirror {pattern!r} -> {target!r}: a pattern ending in /* needs "
            "a target ending in /* (and an exact pattern an exact target)",
            details={"pattern": pattern},
        )
    for side in (pattern, target):
        core = side[:-2] if wild else side
        if not core or "*" in core or "@" in core or core.startswith("/") or "://" in core:
            raise InvalidRequest(
                f"registry mirror {pattern!r} -> {target!r}: {side!r} must look like "
                "host[:port]/path or host[:port]/path/* (one trailing * at most)",
                details={"pattern": pattern},
            )


def validate_mirrors(mirrors: Mapping[str, str]) -> None:
    """Raise InvalidRequest if a mirror entry is malformed."""
    for pattern, target in mirrors.items():
        _check_pattern(pattern, target)


def _split_target(target: str, ref: str) -> tuple[str, str]:
    registry, sep, repository = target.partition("/")
    if not sep or not repository:
        raise InvalidRequest(
            f"registry mirror target {target!r} for {ref!r} has no repository path",
            details={"target": target},
        )
    return registry, repository


def apply_mirrors(ref: ImageRef, mirrors: Mapping[str, str]) -> ImageRef:
    """``ref`` with its repository name rewritten by the longest matching mirror
    pattern (``ref`` itself when none matches). Patterns are normalized like
    references (``docker.io/*`` also matches ``alpine``), tag and digest kept."""
    validate_mirrors(mirrors)
    name = ref.name
    best: tuple[int, str] | None = None  # (length of the matched prefix, new name)
    for pattern, target in mirrors.items():
        if pattern.endswith("/*"):
            prefix = _normalize_prefix(pattern[:-2])
            if name.startswith(prefix + "/"):
                new = target[:-2] + "/" + name[len(prefix) + 1 :]
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), new)
        elif parse_reference(pattern).name == name:
            best = (len(name) + 1, target)  # exact beats any prefix
    if best is None:
        return ref
    registry, repository = _split_target(best[1], str(ref))
    rewritten = f"{registry}/{repository}"
    if not _DOMAIN_RE.match(registry) or not _PATH_RE.match(repository):
        raise InvalidRequest(
            f"registry mirror rewrote {ref.name!r} to {rewritten!r}, which is not a valid "
            "registry/repository name",
            details={"image": str(ref), "rewritten": rewritten},
        )
    return ImageRef(registry, repository, ref.tag, ref.digest)


def _normalize_prefix(prefix: str) -> str:
    """``docker.io`` aliases in a prefix pattern (``index.docker.io/x`` = ``docker.io/x``)."""
    first, sep, rest = prefix.partition("/")
    if first in _HUB_ALIASES:
        first = DEFAULT_REGISTRY
    return f"{first}{sep}{rest}"


def is_insecure(registry: str, insecure: Iterable[str]) -> bool:
    """Whether ``registry`` (host[:port]) is listed as plain-HTTP / unverified TLS."""
    return any(registry == entry.strip().removeprefix("http://").rstrip("/") for entry in insecure)
