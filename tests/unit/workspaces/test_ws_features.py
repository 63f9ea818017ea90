"""Feature references, devcontainer-feature.json, option merging and env names."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.errors import InvalidRequest, ValidationFailed
from atelier.workspaces import (
    FeatureKind,
    LifecycleHook,
    feature_container_env,
    load_feature_metadata,
    option_env_name,
    parse_feature_metadata,
    parse_feature_ref,
    resolve_feature_options,
)
from atelier.workspaces.feature_env import expand_env_references, feature_install_env

NS = "ghcr.io/devcontainers/features"
TGZ = "https://example.com/r/devcontainer-feature-go.tgz"
PYTHON = """
// the spec's option-resolution example, with comments
{
  "id": "python",
  "version": "1.2.0",
  "name": "Python",
  "options": {
    "version": {"type": "string", "enum": ["latest", "3.10", "3.9"], "default": "latest"},
    "pip": {"type": "boolean", "default": true, "description": "Installs pip"},
    "optimize": {"type": "boolean", "default": true},
    "install-tools": {"type": "string", "proposals": ["black", "ruff"], "default": "ruff"},
  },
  "containerEnv": {"PYTHON_PATH": "/usr/local/python", "PATH": "/usr/local/python/bin:${PATH}"},
  "installsAfter": ["ghcr.io/devcontainers/features/common-utils"],
  "dependsOn": {"ghcr.io/devcontainers/features/git:1": {"ppa": false}},
  "entrypoint": "/usr/local/share/python-init.sh",
  "legacyIds": ["py"],
  "postCreateCommand": "python -m pip --version",
  "customizations": {"vscode": {"extensions": ["ms-python.python"]}},
}
"""


@pytest.mark.parametrize(
    ("ref", "kind", "resource", "version", "short_id"),
    [
        (f"{NS}/node:1", FeatureKind.OCI, f"{NS}/node", "1", "node"),
        (f"{NS}/node", FeatureKind.OCI, f"{NS}/node", "latest", "node"),
        (
            "GHCR.io/DevContainers/Features/Node:1.2.3",
            FeatureKind.OCI,
            f"{NS}/node",
            "1.2.3",
            "node",
        ),
        ("localhost:5000/f/tool:2", FeatureKind.OCI, "localhost:5000/f/tool", "2", "tool"),
        (
            "reg.local:8443/a/b/c/tool",
            FeatureKind.OCI,
            "reg.local:8443/a/b/c/tool",
            "latest",
            "tool",
        ),
        (
            f"ghcr.io/x/go@sha256:{'a' * 64}",
            FeatureKind.OCI,
            "ghcr.io/x/go",
            f"sha256:{'a' * 64}",
            "go",
        ),
        (TGZ, FeatureKind.TARBALL, TGZ, "", "go"),
        ("./features/mine", FeatureKind.LOCAL, "./features/mine", "", "mine"),
    ],
)
def test_reference_kinds(
    ref: str, kind: FeatureKind, resource: str, version: str, short_id: str
) -> None:
    parsed = parse_feature_ref(ref, {})
    assert parsed is not None
    assert (parsed.kind, parsed.resource, parsed.version, parsed.id) == (
        kind,
        resource,
        version,
        short_id,
    )
    assert parsed.ref == ref


def test_oci_parts() -> None:
    ref = parse_feature_ref("ghcr.io/devcontainers/features/node:1")
    assert ref is not None
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "ghcr.io",
        "devcontainers/features/node",
        "1",
        None,
    )


@pytest.mark.parametrize(
    ("value", "options"),
    [
        ({}, {}),
        (True, {}),
        (None, {}),
        ("18", {"version": "18"}),
        ({"version": "20", "nvm": False, "n": 3}, {"version": "20", "nvm": False, "n": "3"}),
    ],
)
def test_option_value_forms(value: object, options: dict[str, object]) -> None:
    ref = parse_feature_ref("ghcr.io/a/b/c", value)
    assert ref is not None and dict(ref.options) == options


def test_false_disables() -> None:
    assert parse_feature_ref("ghcr.io/a/b/c", False) is None


@pytest.mark.parametrize(
    ("ref", "value", "why"),
    [
        ("node", {}, "legacy short ids"),
        ("devcontainers/features/node", {}, "legacy short ids"),
        ("http://example.com/f.tgz", {}, "must use https"),
        ("ghcr.io/a/b:bad tag", {}, "not a valid tag"),
        ("ghcr.io/a/b@sha256:xyz", {}, "not a valid digest"),
        ("ghcr.io/a/b c", {}, "not a valid OCI repository name"),
        ("ghcr.io/a/b", 5, "options must be an object"),
        ("ghcr.io/a/b", {"o": None}, "must be a string or a boolean"),
    ],
)
def test_bad_references(ref: str, value: object, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        parse_feature_ref(ref, value)


def test_local_reference_stays_in_the_devcontainer_folder(tmp_path: Path) -> None:
    config_dir = tmp_path / "repo/.devcontainer/python"
    root = tmp_path / "repo/.devcontainer"
    ok = parse_feature_ref("../shared/tool", {}, config_dir=config_dir, local_root=root)
    assert ok is not None and ok.path == (root / "shared/tool").resolve()
    with pytest.raises(InvalidRequest, match="outside"):
        parse_feature_ref("../../src", {}, config_dir=config_dir, local_root=root)


def test_metadata() -> None:
    meta = parse_feature_metadata(PYTHON)
    assert (meta.id, meta.version, meta.name) == ("python", "1.2.0", "Python")
    assert list(meta.options) == ["version", "pip", "optimize", "install-tools"]
    assert meta.options["version"].enum == ("latest", "3.10", "3.9")
    assert meta.options["install-tools"].proposals == ("black", "ruff")
    assert meta.options["pip"].description == "Installs pip"
    assert meta.installs_after == ("ghcr.io/devcontainers/features/common-utils",)
    assert dict(meta.depends_on) == {"ghcr.io/devcontainers/features/git:1": {"ppa": False}}
    assert meta.entrypoint == "/usr/local/share/python-init.sh"
    assert meta.legacy_ids == ("py",)
    assert set(meta.lifecycle) == {LifecycleHook.POST_CREATE}
    assert meta.warnings == () and meta.unsupported == ()


def test_metadata_unsupported_unknown_and_deprecated_warn() -> None:
    meta = parse_feature_metadata(
        """{"id": "dind", "version": "1.0.0", "privileged": true,
            "mounts": [{"type": "volume", "target": "/v", "source": "v-${devcontainerId}"}],
            "deprecated": true, "x-extra": 1}"""
    )
    assert meta.unsupported == ("privileged", "mounts")
    assert meta.warnings == (
        "Feature dind: Atelier does not apply privileged, mounts; "
        "unknown properties ignored: x-extra",
        "Feature dind is deprecated",
    )


def test_metadata_schema_errors_are_all_reported() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_feature_metadata(
            """{
              "id": "x",
              "options": {
                "a": {"type": "boolean", "default": "yes"},
                "b": {"type": "string", "enum": ["1"]}
              },
              "installsAfter": "y"
            }""",
            source="features/x/devcontainer-feature.json",
        )
    err = info.value
    assert err.details["file"] == "features/x/devcontainer-feature.json"
    found = {(e["path"], e["message"], e["line"]) for e in err.details["errors"]}
    assert found == {
        ("", "'version' is a required property", 1),
        ("options.a.default", "'yes' is not of type 'boolean'", 4),
        ("options.b", "'default' is a required property", 5),
        ("installsAfter", "'y' is not of type 'array'", 7),
    }


def test_load_metadata_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "devcontainer-feature.json").write_text(PYTHON)
    assert load_feature_metadata(tmp_path).id == "python"
    with pytest.raises(ValidationFailed, match="cannot read"):
        load_feature_metadata(tmp_path / "missing")


@pytest.mark.parametrize(
    ("option", "env"),
    [
        ("version", "VERSION"),
        ("installTools", "INSTALLTOOLS"),
        ("install-tools", "INSTALL_TOOLS"),
        ("a.b c", "A_B_C"),
        ("2fa", "_FA"),
        ("_private", "_PRIVATE"),
        ("__x9", "_X9"),
        ("v2", "V2"),
        ("ünï", "_N_"),
    ],
)
def test_option_env_names(option: str, env: str) -> None:
    assert option_env_name(option) == env


def test_options_merge_with_defaults() -> None:
    meta = parse_feature_metadata(PYTHON)
    resolved = resolve_feature_options(meta, {"version": "3.10", "pip": False, "extra-thing": "x"})
    assert dict(resolved.values) == {
        "version": "3.10",
        "pip": False,
        "optimize": True,
        "install-tools": "ruff",
        "extra-thing": "x",
    }
    assert dict(resolved.env) == {
        "VERSION": "3.10",
        "PIP": "false",
        "OPTIMIZE": "true",
        "INSTALL_TOOLS": "ruff",
        "EXTRA_THING": "x",
    }
    assert resolved.unknown == ("extra-thing",)
    # proposals allow any string; "true"/"false" strings are accepted for booleans
    free = resolve_feature_options(meta, {"install-tools": "mypy", "optimize": "false"})
    assert free.env["INSTALL_TOOLS"] == "mypy" and free.env["OPTIMIZE"] == "false"


def test_bad_option_values_are_all_reported() -> None:
    meta = parse_feature_metadata(PYTHON)
    with pytest.raises(ValidationFailed) as info:
        resolve_feature_options(meta, {"version": "2.7", "pip": "maybe", "install-tools": True})
    assert info.value.details == {
        "feature": "python",
        "errors": [
            {"option": "version", "message": "'2.7' is not one of 'latest', '3.10', '3.9'"},
            {"option": "pip", "message": "expects true or false, not 'maybe'"},
            {"option": "install-tools", "message": "expects a string, not True"},
        ],
    }


def test_container_env_extends_the_image_env() -> None:
    meta = parse_feature_metadata(PYTHON)
    env = feature_container_env(meta, {"PATH": "/usr/bin:/bin", "HOME": "/root"})
    assert env == {
        "PATH": "/usr/local/python/bin:/usr/bin:/bin",
        "HOME": "/root",
        "PYTHON_PATH": "/usr/local/python",
    }


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("$A/x", "1/x"),
        ("${A}x", "1x"),
        ("${NOPE}-", "-"),
        ("${NOPE:-dflt}", "dflt"),
        ("${A:-dflt}", "1"),
        ("${A:+alt}", "alt"),
        ("${NOPE:+alt}", ""),
        ("\\$A", "$A"),
        ("cost $5", "cost $5"),
    ],
)
def test_env_reference_expansion(text: str, out: str) -> None:
    assert expand_env_references(text, {"A": "1"}) == out


def test_install_env_has_options_and_users() -> None:
    meta = parse_feature_metadata(PYTHON)
    options = resolve_feature_options(meta, {"pip": False})
    env = feature_install_env(
        options,
        container_user="root",
        container_user_home="/root",
        remote_user="dev",
        remote_user_home="/home/dev",
    )
    assert env["PIP"] == "false" and env["VERSION"] == "latest"
    assert (env["_CONTAINER_USER"], env["_CONTAINER_USER_HOME"]) == ("root", "/root")
    assert (env["_REMOTE_USER"], env["_REMOTE_USER_HOME"]) == ("dev", "/home/dev")
    default = feature_install_env(options)
    assert (default["_REMOTE_USER"], default["_REMOTE_USER_HOME"]) == ("root", "/root")
    guessed = feature_install_env(options, remote_user="ada")
    assert guessed["_REMOTE_USER_HOME"] == "/home/ada"
