"""devcontainer.json → DevContainerConfig: every supported property and its forms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from atelier.workspaces import (
    DevContainerConfig,
    FeatureKind,
    ForwardPort,
    LifecycleHook,
    PortAttributes,
    load_devcontainer,
    resolve_container_env,
)
from atelier.workspaces.substitution import compute_devcontainer_id

WriteRepo = Callable[[dict[str, str]], Path]  # the write_repo fixture (conftest.py)

FULL = """
// A configuration using every property Atelier supports.
{
  "$schema": "https://raw.githubusercontent.com/devcontainers/spec/main/schemas/devContainer.schema.json",
  "name": "full example",
  "build": {
    "dockerfile": "Dockerfile",
    "context": "..",
    "args": {"VARIANT": "3.12", "USER_HOME": "${localEnv:HOME}"},
    "target": "dev",
  },
  "features": {
    "ghcr.io/devcontainers/features/node:1": {"version": "20"},
    "ghcr.io/devcontainers/features/go": "1.22",
    "./local-feature": true,
    "ghcr.io/devcontainers/features/rust:1": false,
  },
  "overrideFeatureInstallOrder": ["./local-feature", "ghcr.io/devcontainers/features/node"],
  "containerEnv": {"APP_ENV": "dev", "TOKEN": "${localEnv:MY_TOKEN:none}"},
  "remoteEnv": {
    "PATH": "${containerEnv:PATH}:/opt/tools",
    "WS": "${containerWorkspaceFolder}",
    "DROP": null,
  },
  "containerUser": "root",
  "remoteUser": "vscode",
  "workspaceFolder": "/src/${localWorkspaceFolderBasename}",
  "forwardPorts": [3000, "localhost:8080"],
  "portsAttributes": {
    "3000": {"label": "web", "protocol": "https", "onAutoForward": "openBrowser"},
    "9000-9100": {"label": "debug", "requireLocalPort": true, "elevateIfNeeded": false},
  },
  "otherPortsAttributes": {"onAutoForward": "ignore"},
  "initializeCommand": "echo on the host",
  "onCreateCommand": "pip install -e .",
  "updateContentCommand": ["make", "deps"],
  "postCreateCommand": {"db": "make db", "assets": ["npm", "run", "build"]},
  "postStartCommand": "echo started",
  "postAttachCommand": ["echo", "attached"],
  "waitFor": "postCreateCommand",
  "hostRequirements": {"cpus": 4, "memory": "8gb", "storage": "32gb", "gpu": "optional"},
  "secrets": {"API_KEY": {"description": "for the API"}, "OTHER": {}},
  "customizations": {"vscode": {"extensions": ["ms-python.python"]}},
  "init": true,
}
"""

LOCAL_FEATURE = '{"id": "local-feature", "version": "1.0.0"}'


def full_repo(write_repo: WriteRepo) -> Path:
    return write_repo(
        {
            ".devcontainer/devcontainer.json": FULL,
            ".devcontainer/Dockerfile": "FROM debian:12\n",
            ".devcontainer/local-feature/devcontainer-feature.json": LOCAL_FEATURE,
        }
    )


def load_full(write_repo: WriteRepo) -> tuple[Path, DevContainerConfig]:
    repo = full_repo(write_repo)
    config = load_devcontainer(repo, local_env={"HOME": "/home/me", "MY_TOKEN": "t0k"})
    assert config is not None
    return repo, config


def test_every_supported_property(write_repo: WriteRepo) -> None:
    repo, config = load_full(write_repo)
    repo = repo.resolve()
    assert config.config_path == repo / ".devcontainer/devcontainer.json"
    assert config.config_dir == repo / ".devcontainer"
    assert config.name == "full example"
    assert config.image is None
    assert config.build is not None
    assert config.build.dockerfile == repo / ".devcontainer/Dockerfile"
    assert config.build.context == repo  # ".." from the .devcontainer folder
    assert dict(config.build.args) == {"VARIANT": "3.12", "USER_HOME": "/home/me"}
    assert config.build.target == "dev"
    assert dict(config.container_env) == {"APP_ENV": "dev", "TOKEN": "t0k"}
    assert config.container_user == "root"
    assert config.remote_user == "vscode"
    assert config.workspace_folder == "/src/myrepo"
    assert dict(config.remote_env) == {
        "PATH": "${containerEnv:PATH}:/opt/tools",  # second pass
        "WS": "/src/myrepo",
        "DROP": None,
    }
    assert config.forward_ports == (ForwardPort(3000), ForwardPort(8080, "localhost"))
    assert config.ports_attributes["3000"] == PortAttributes(
        label="web", protocol="https", on_auto_forward="openBrowser"
    )
    assert config.other_ports_attributes == PortAttributes(on_auto_forward="ignore")
    assert config.wait_for is LifecycleHook.POST_CREATE
    assert set(config.lifecycle) == set(LifecycleHook)
    req = config.host_requirements
    assert (req.vcpus, req.memory_mib, req.disk_mib) == (4, 8192, 32768)
    assert not req.needs_gpu
    assert dict(config.secrets) == {"API_KEY": "for the API", "OTHER": None}
    assert config.customizations["vscode"] == {"extensions": ["ms-python.python"]}
    assert config.override_feature_install_order == (
        "./local-feature",
        "ghcr.io/devcontainers/features/node",
    )
    assert config.unsupported == ()
    assert config.unknown_properties == ()
    assert config.warnings == ()


def test_features_are_parsed_and_disabled_ones_dropped(write_repo: WriteRepo) -> None:
    repo, config = load_full(write_repo)
    node, go, local = config.features
    assert (node.kind, node.resource, node.version) == (
        FeatureKind.OCI,
        "ghcr.io/devcontainers/features/node",
        "1",
    )
    assert dict(node.options) == {"version": "20"}
    assert (go.kind, go.version, dict(go.options)) == (
        FeatureKind.OCI,
        "latest",
        {"version": "1.22"},
    )
    assert local.kind is FeatureKind.LOCAL
    assert local.path == repo.resolve() / ".devcontainer/local-feature"
    assert dict(local.options) == {}


def test_lifecycle_forms_are_normalised(write_repo: WriteRepo) -> None:
    _, config = load_full(write_repo)
    on_create = config.command("onCreateCommand")
    assert on_create is not None and not on_create.parallel
    assert on_create.commands[0].to_argv() == ("/bin/sh", "-c", "pip install -e .")
    update = config.command(LifecycleHook.UPDATE_CONTENT)
    assert update is not None
    assert update.commands[0].to_argv() == ("make", "deps")
    post_create = config.command(LifecycleHook.POST_CREATE)
    assert post_create is not None and post_create.parallel
    assert [(c.name, c.to_argv()) for c in post_create.commands] == [
        ("db", ("/bin/sh", "-c", "make db")),
        ("assets", ("npm", "run", "build")),
    ]


def test_defaults(write_repo: WriteRepo) -> None:
    repo = write_repo({".devcontainer.json": '{"image": "debian:12"}'})
    config = load_devcontainer(repo)
    assert config is not None
    assert config.image == "debian:12"
    assert config.build is None
    assert config.workspace_folder == "/workspaces/myrepo"
    assert config.wait_for is LifecycleHook.UPDATE_CONTENT
    assert config.lifecycle == {}
    assert config.features == ()
    assert config.host_requirements.vcpus is None
    assert config.port_attributes(3000) is None
    assert config.devcontainer_id == compute_devcontainer_id(
        {
            "devcontainer.local_folder": str(repo.resolve()),
            "devcontainer.config_file": str(repo.resolve() / ".devcontainer.json"),
        }
    )


def test_build_paths_resolve_from_the_config_folder(write_repo: WriteRepo) -> None:
    repo = write_repo(
        {
            ".devcontainer/python/devcontainer.json": """
            {"build": {"dockerfile": "../../docker/Dev"}}
            """,
            "docker/Dev": "FROM x\n",
        }
    )
    config = load_devcontainer(repo)
    assert config is not None and config.build is not None
    assert config.build.dockerfile == repo.resolve() / "docker/Dev"
    assert config.build.context == repo.resolve() / ".devcontainer/python"  # default "."
    assert config.build.args == {} and config.build.target is None


def test_legacy_top_level_dockerfile_and_context(write_repo: WriteRepo) -> None:
    repo = write_repo(
        {
            ".devcontainer/devcontainer.json": """
            {"dockerFile": "Dockerfile", "context": "..", "build": {"args": {"A": "1"}}}
            """,
            ".devcontainer/Dockerfile": "FROM x\n",
        }
    )
    config = load_devcontainer(repo)
    assert config is not None and config.build is not None
    assert config.build.dockerfile == repo.resolve() / ".devcontainer/Dockerfile"
    assert config.build.context == repo.resolve()
    assert dict(config.build.args) == {"A": "1"}


def test_port_attributes_lookup(write_repo: WriteRepo) -> None:
    _, config = load_full(write_repo)
    assert config.port_attributes(3000) == PortAttributes(
        label="web", protocol="https", on_auto_forward="openBrowser"
    )
    attrs = config.port_attributes(9050)
    assert attrs is not None and attrs.label == "debug" and attrs.require_local_port is True
    assert config.port_attributes(1234) == PortAttributes(on_auto_forward="ignore")


def test_container_env_second_pass(write_repo: WriteRepo) -> None:
    repo = write_repo(
        {
            ".devcontainer.json": """
            {
              "image": "debian:12",
              "remoteEnv": {"PATH": "${containerEnv:PATH}:/x",
                            "HOME2": "${containerEnv:NOPE:/root}",
                            "GONE": null, "EMPTY": "${containerEnv:NOPE}"},
              "postCreateCommand": ["echo", "${containerEnv:HOME}"],
              "initializeCommand": "echo ${containerEnv:HOME}"
            }
            """
        }
    )
    config = load_devcontainer(repo)
    assert config is not None
    container_env = {"PATH": "/usr/bin", "HOME": "/home/u", "GONE": "x"}
    env = config.remote_environment(container_env)
    assert env == {"PATH": "/usr/bin:/x", "HOME": "/home/u", "HOME2": "/root", "EMPTY": ""}
    resolved = resolve_container_env(config, container_env)
    post = resolved.command("postCreateCommand")
    assert post is not None and post.commands[0].argv == ("echo", "/home/u")
    init = resolved.command("initializeCommand")
    assert init is not None and init.commands[0].argv == ("echo ${containerEnv:HOME}",)  # host side
    assert resolved.remote_env["PATH"] == "/usr/bin:/x"
    assert config.remote_env["PATH"] == "${containerEnv:PATH}:/x"  # the original is unchanged


def test_explicit_devcontainer_id_and_check_files_off(write_repo: WriteRepo) -> None:
    repo = write_repo(
        {
            ".devcontainer/devcontainer.json": """
            {"build": {"dockerfile": "Missing"}, "remoteEnv": {"ID": "${devcontainerId}"},
             "features": {"./nothing-here": {}}}
            """
        }
    )
    config = load_devcontainer(repo, devcontainer_id="abc123", check_files=False)
    assert config is not None
    assert config.devcontainer_id == "abc123"
    assert config.remote_env["ID"] == "abc123"


def test_no_configuration_is_none(write_repo: WriteRepo) -> None:
    assert load_devcontainer(write_repo({"README.md": "hi"})) is None


@pytest.mark.parametrize(
    ("memory", "mib"),
    [("4gb", 4096), ("4096mb", 4096), ("1tb", 1024 * 1024), ("1048576", 1), ("1kb", 1)],
)
def test_host_requirement_units(write_repo: WriteRepo, memory: str, mib: int) -> None:
    repo = write_repo(
        {".devcontainer.json": f'{{"image": "x", "hostRequirements": {{"memory": "{memory}"}}}}'}
    )
    config = load_devcontainer(repo)
    assert config is not None
    assert config.host_requirements.memory_mib == mib
    assert config.host_requirements.apply(vcpus=1, memory_mib=2048, disk_mib=2048) == (
        1,
        max(2048, mib),
        2048,
    )
