"""Properties Atelier does not apply: never silently ignored, always in ONE warning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from atelier.workspaces import ForwardPort, load_devcontainer
from atelier.workspaces.properties import UNSUPPORTED_PROPERTIES

WriteRepo = Callable[[dict[str, str]], Path]  # the write_repo fixture (conftest.py)


def test_unsupported_and_unknown_properties_make_one_warning(write_repo: WriteRepo) -> None:
    repo = write_repo(
        {
            ".devcontainer/devcontainer.json": """
            {
              "build": {"dockerfile": "Dockerfile", "cacheFrom": "img:cache",
                        "options": ["--pull"]},
              "runArgs": ["--cap-add=SYS_PTRACE"],
              "appPort": 3000,
              "mounts": ["source=/var/run/docker.sock,target=/var/run/docker.sock,type=bind"],
              "workspaceMount": "source=${localWorkspaceFolder},target=/w,type=bind",
              "privileged": true,
              "capAdd": ["SYS_PTRACE"],
              "securityOpt": ["seccomp=unconfined"],
              "overrideCommand": false,
              "shutdownAction": "none",
              "updateRemoteUserUID": true,
              "userEnvProbe": "loginInteractiveShell",
              "hostRequirements": {"gpu": true},
              "forwardPorts": [3000, "db:5432"],
              // legacy VS Code properties, not in the schema
              "extensions": ["ms-python.python"],
              "settings": {}
            }
            """,
            ".devcontainer/Dockerfile": "FROM debian:12\n",
        }
    )
    config = load_devcontainer(repo)
    assert config is not None
    assert set(config.unsupported) == set(UNSUPPORTED_PROPERTIES)
    assert config.unknown_properties == ("extensions", "settings")
    [warning] = config.warnings
    assert warning.startswith(".devcontainer/devcontainer.json: Atelier ignores runArgs (")
    for name in UNSUPPORTED_PROPERTIES:
        assert f"{name} (" in warning
    assert "forwardPorts db:5432 (only the workspace's own ports are forwarded)" in warning
    assert "unknown properties extensions, settings" in warning
    assert config.host_requirements.needs_gpu
    assert ForwardPort(5432, "db") in config.forward_ports  # kept: the caller decides


def test_harmless_values_and_metadata_do_not_warn(write_repo: WriteRepo) -> None:
    repo = write_repo(
        {
            ".devcontainer.json": """
            {
              "$schema": "https://example.com/schema.json",
              "image": "debian:12",
              "runArgs": [], "mounts": [], "capAdd": [], "securityOpt": [],
              "privileged": false, "overrideCommand": true, "updateRemoteUserUID": false,
              "userEnvProbe": "none", "init": true,
              "hostRequirements": {"gpu": "optional"},
              "customizations": {"vscode": {"settings": {}}},
              "forwardPorts": ["localhost:3000", 3001]
            }
            """
        }
    )
    config = load_devcontainer(repo)
    assert config is not None
    assert config.unsupported == ()
    assert config.warnings == ()


def test_each_unsupported_property_alone(write_repo: WriteRepo) -> None:
    values = {
        "runArgs": '["--init"]',
        "appPort": "[8080]",
        "mounts": '[{"type": "volume", "target": "/data"}]',
        "workspaceMount": '""',
        "privileged": "true",
        "capAdd": '["NET_ADMIN"]',
        "securityOpt": '["x"]',
        "overrideCommand": "false",
        "shutdownAction": '"stopContainer"',
        "updateRemoteUserUID": "true",
        "userEnvProbe": '"loginShell"',
    }
    for name, value in values.items():
        repo = write_repo({".devcontainer.json": f'{{"image": "x", "{name}": {value}}}'})
        config = load_devcontainer(repo)
        assert config is not None
        assert config.unsupported == (name,)
        assert len(config.warnings) == 1 and UNSUPPORTED_PROPERTIES[name] in config.warnings[0]
