"""Image references, registry mirrors and insecure registries (pure functions)."""

from __future__ import annotations

import pytest

from atelier.config import Settings
from atelier.errors import InvalidRequest
from atelier.images.registry_config import (
    ImageRef,
    apply_mirrors,
    is_insecure,
    parse_reference,
    validate_mirrors,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3", "docker.io/library/alpine:3"),
        ("docker://alpine:3", "docker.io/library/alpine:3"),
        ("library/alpine:3.19", "docker.io/library/alpine:3.19"),
        ("user/app", "docker.io/user/app:latest"),
        ("index.docker.io/user/app:v1", "docker.io/user/app:v1"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("ghcr.io/org/tool:1.2.3", "ghcr.io/org/tool:1.2.3"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b/c:tag_1", "localhost:5000/a/b/c:tag_1"),
        ("127.0.0.1:5000/tiny:1", "127.0.0.1:5000/tiny:1"),
        ("registry.example.com/tiny", "registry.example.com/tiny:latest"),
        (f"alpine@{DIGEST}", f"docker.io/library/alpine@{DIGEST}"),
        (f"ghcr.io/o/i:3@{DIGEST}", f"ghcr.io/o/i:3@{DIGEST}"),
        ("my-registry:5000/my_app/sub.part", "my-registry:5000/my_app/sub.part:latest"),
    ],
)
def test_parse_and_normalize(ref: str, expected: str) -> None:
    assert str(parse_reference(ref)) == expected


def test_parts() -> None:
    ref = parse_reference("mirror.local:5000/dockerhub/library/alpine:3")
    assert ref == ImageRef("mirror.local:5000", "dockerhub/library/alpine", "3", None)
    assert ref.name == "mirror.local:5000/dockerhub/library/alpine"
    assert ref.pull_spec == "mirror.local:5000/dockerhub/library/alpine:3"


def test_pull_spec_prefers_the_digest() -> None:
    ref = parse_reference(f"ghcr.io/o/i:3@{DIGEST}")
    assert ref.pull_spec == f"ghcr.io/o/i@{DIGEST}"  # registries take one of the two
    assert parse_reference("ghcr.io/o/i:3").with_digest(DIGEST).pull_spec == f"ghcr.io/o/i@{DIGEST}"


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("", "empty"),
        ("Alpine", "lowercase"),
        ("alpine:", "tag"),
        ("alpine:bad tag", "tag"),
        ("alpine@sha256:xyz", "digest"),
        ("oci-archive:/tmp/x.tar", "imported, not pulled"),
        ("https://ghcr.io/a/b", "registry references"),
        ("ghcr.io//a", "lowercase"),
        ("ghcr.io/a/", "lowercase"),
        ("bad_host.io:x/a", "registry host"),
        ("a" * 600, "512"),
    ],
)
def test_invalid_references(ref: str, why: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_reference(ref)
    assert why in err.value.message
    assert err.value.details["image"] == ref


MIRRORS = {
    "registry.example.com/*": "mirror.local:5000/*",
    "docker.io/*": "mirror.local:5000/dockerhub/*",
    "docker.io/library/*": "mirror.local:5000/official/*",
    "ghcr.io/acme/tool": "mirror.local:5000/tools/acme-tool",
}


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("registry.example.com/tiny:1", "mirror.local:5000/tiny:1"),
        ("registry.example.com/a/b/c", "mirror.local:5000/a/b/c:latest"),
        # bare names are docker.io names; the longest pattern wins
        ("alpine:3", "mirror.local:5000/official/alpine:3"),
        ("user/app:v2", "mirror.local:5000/dockerhub/user/app:v2"),
        # exact entries, digests kept
        (f"ghcr.io/acme/tool@{DIGEST}", f"mirror.local:5000/tools/acme-tool@{DIGEST}"),
        ("ghcr.io/acme/tool:9", "mirror.local:5000/tools/acme-tool:9"),
        # no match: unchanged (a prefix must end at a path boundary)
        ("ghcr.io/acme/toolbox:1", "ghcr.io/acme/toolbox:1"),
        ("registry.example.community/x:1", "registry.example.community/x:1"),
    ],
)
def test_apply_mirrors(ref: str, expected: str) -> None:
    assert str(apply_mirrors(parse_reference(ref), MIRRORS)) == expected


def test_no_mirrors_is_identity() -> None:
    ref = parse_reference("alpine")
    assert apply_mirrors(ref, {}) is ref


def test_hub_alias_in_a_pattern() -> None:
    mirrors = {"index.docker.io/*": "m.local/hub/*"}
    assert (
        str(apply_mirrors(parse_reference("alpine"), mirrors))
        == "m.local/hub/library/alpine:latest"
    )


@pytest.mark.parametrize(
    "mirrors",
    [
        {"docker.io/*": "mirror.local:5000"},  # wildcard to exact
        {"ghcr.io/a": "mirror.local/*"},  # exact to wildcard
        {"*": "mirror.local/*"},
        {"docker.io/*/x/*": "m/*"},
        {"https://docker.io/*": "m/*"},
    ],
)
def test_malformed_mirrors(mirrors: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest):
        validate_mirrors(mirrors)
    with pytest.raises(InvalidRequest):
        apply_mirrors(parse_reference("docker.io/a/x"), mirrors)


def test_mirror_target_must_be_a_valid_name() -> None:
    with pytest.raises(InvalidRequest, match="not a valid"):
        apply_mirrors(parse_reference("ghcr.io/a/b"), {"ghcr.io/*": "Mirror.local/UP/*"})


def test_is_insecure() -> None:
    insecure = ["127.0.0.1:5000", " http://mirror.local:5000/ ", "plain.local"]
    assert is_insecure("127.0.0.1:5000", insecure)
    assert is_insecure("mirror.local:5000", insecure)
    assert is_insecure("plain.local", insecure)
    assert not is_insecure("127.0.0.1:5001", insecure)
    assert not is_insecure("plain.local:443", insecure)
    assert not is_insecure("docker.io", [])


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_INSECURE_REGISTRIES", "127.0.0.1:5000, mirror.local:5000")
    monkeypatch.setenv("ATELIER_REGISTRY_MIRRORS", '{"docker.io/*": "mirror.local:5000/hub/*"}')
    s = Settings()
    assert s.insecure_registries == ["127.0.0.1:5000", "mirror.local:5000"]
    assert s.registry_mirrors == {"docker.io/*": "mirror.local:5000/hub/*"}
    monkeypatch.setenv("ATELIER_INSECURE_REGISTRIES", '["a:1", "b:2"]')
    assert Settings().insecure_registries == ["a:1", "b:2"]
    monkeypatch.delenv("ATELIER_INSECURE_REGISTRIES")
    monkeypatch.delenv("ATELIER_REGISTRY_MIRRORS")
    assert Settings().insecure_registries == []
    assert Settings().registry_mirrors == {}
