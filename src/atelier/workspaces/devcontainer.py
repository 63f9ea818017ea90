"""The Dev Container configuration model: ``devcontainer.json`` → :class:`DevContainerConfig`.

:func:`load_devcontainer` locates the configuration in a checked-out
repository, parses it (JSON with comments), validates it against the spec's
schema, substitutes the first-pass variables and checks what it refers to
(the Dockerfile, the build context, local Features), reporting every problem
of a kind at once as :class:`~atelier.errors.ValidationFailed` with
``details = {"file", "errors": [{"path", "message", "line", "column"}]}``.

Paths in the result are resolved on the host; everything else is plain data
for the layers that build images and run sandboxes. Pure logic: no sandbox,
no network, no subprocess.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from atelier.errors import InvalidRequest, ValidationFailed
from atelier.workspaces.feature_order import unversioned_id
from atelier.workspaces.features import FEATURE_METADATA_NAME, FeatureRef, parse_feature_ref
from atelier.workspaces.issues import ConfigIssue, issues_error
from atelier.workspaces.jsonc import JsoncDocument, parse_jsonc
from atelier.workspaces.lifecycle import LifecycleCommand, LifecycleHook, parse_lifecycle_command
from atelier.workspaces.locate import locate_devcontainer
from atelier.workspaces.properties import (
    ForwardPort,
    PortAttributes,
    parse_forward_port,
    parse_port_attributes,
    unsupported_properties,
    unsupported_warning,
)
from atelier.workspaces.resources import HostRequirements, parse_host_requirements
from atelier.workspaces.schema import validate_devcontainer_schema
from atelier.workspaces.substitution import (
    SubstitutionContext,
    compute_devcontainer_id,
    substitute,
    substitute_container_env,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "BuildSpec",
    "DevContainerConfig",
    "load_devcontainer",
    "parse_devcontainer",
    "resolve_container_env",
]

MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """``build``: a Dockerfile build. Paths are resolved against the config's folder."""

    dockerfile: Path
    context: Path
    args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None


@dataclass(frozen=True)
class DevContainerConfig:
    """A validated ``devcontainer.json`` with first-pass variables substituted."""

    config_path: Path
    repo_dir: Path
    workspace_folder: str  # in the container; default /workspaces/<repo folder name>
    devcontainer_id: str
    name: str | None = None
    image: str | None = None
    build: BuildSpec | None = None
    features: tuple[FeatureRef, ...] = ()
    override_feature_install_order: tuple[str, ...] = ()
    container_env: Mapping[str, str] = field(default_factory=dict)
    remote_env: Mapping[str, str | None] = field(default_factory=dict)  # None: unset
    container_user: str | None = None
    remote_user: str | None = None
    forward_ports: tuple[ForwardPort, ...] = ()
    ports_attributes: Mapping[str, PortAttributes] = field(default_factory=dict)
    other_ports_attributes: PortAttributes | None = None
    lifecycle: Mapping[LifecycleHook, LifecycleCommand] = field(default_factory=dict)
    wait_for: LifecycleHook = LifecycleHook.UPDATE_CONTENT
    host_requirements: HostRequirements = field(default_factory=HostRequirements)
    secrets: Mapping[str, str | None] = field(default_factory=dict)  # name -> description
    customizations: Mapping[str, Any] = field(default_factory=dict)  # tool-specific, untouched
    unsupported: tuple[str, ...] = ()  # properties present that Atelier does not apply
    unknown_properties: tuple[str, ...] = ()
    unresolved_variables: tuple[str, ...] = ()  # ${...} left as written
    warnings: tuple[str, ...] = ()

    @property
    def config_dir(self) -> Path:
        return self.config_path.parent

    def command(self, hook: LifecycleHook | str) -> LifecycleCommand | None:
        return self.lifecycle.get(LifecycleHook(hook))

    def port_attributes(self, port: int) -> PortAttributes | None:
        """Attributes for ``port``: an exact key, else a ``"low-high"`` range, else
        ``otherPortsAttributes``. (Regular-expression keys match process command
        lines, not numbers, and are not consulted here.)"""
        if str(port) in self.ports_attributes:
            return self.ports_attributes[str(port)]
        for key, attributes in self.ports_attributes.items():
            low, dash, high = key.partition("-")
            if dash and low.isdigit() and high.isdigit() and int(low) <= port <= int(high):
                return attributes
        return self.other_ports_attributes

    def remote_environment(self, container_env: Mapping[str, str]) -> dict[str, str]:
        """The environment for processes run in the workspace: the container's
        environment, with ``remoteEnv`` (``${containerEnv:...}`` resolved) on top."""
        env = dict(container_env)
        for key, value in substitute_container_env(dict(self.remote_env), container_env).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env


def _frozen(mapping: Mapping[Any, Any] | None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping or {}))


def _substitute_command(
    command: LifecycleCommand, container_env: Mapping[str, str]
) -> LifecycleCommand:
    commands = tuple(
        dataclasses.replace(c, argv=tuple(substitute_container_env(list(c.argv), container_env)))
        for c in command.commands
    )
    return dataclasses.replace(command, commands=commands)


def resolve_container_env(
    config: DevContainerConfig, container_env: Mapping[str, str]
) -> DevContainerConfig:
    """The second substitution pass: ``${containerEnv:VAR[:default]}`` in ``remoteEnv``
    and in the in-container lifecycle commands, once the container's environment is known."""
    lifecycle = {
        hook: command
        if hook is LifecycleHook.INITIALIZE
        else _substitute_command(command, container_env)
        for hook, command in config.lifecycle.items()
    }
    remote_env = substitute_container_env(dict(config.remote_env), container_env)
    return dataclasses.replace(config, lifecycle=_frozen(lifecycle), remote_env=_frozen(remote_env))


class _Checker:
    """Collects semantic problems with their positions."""

    def __init__(self, doc: JsoncDocument, repo_dir: Path) -> None:
        self.doc = doc
        self.repo = repo_dir.resolve()
        self.issues: list[ConfigIssue] = []

    def add(self, path: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        at = self.doc.position(path, key=key)
        self.issues.append(
            ConfigIssue(path, message, at.line if at else None, at.column if at else None)
        )

    def shown(self, path: Path) -> str:
        """``path`` relative to the repository (as the user knows it), else absolute."""
        if path.is_relative_to(self.repo):
            return path.relative_to(self.repo).as_posix() or "."
        return str(path)

    def in_repo(self, where: tuple[str | int, ...], written: str, base: Path) -> Path | None:
        path = (base / written).resolve()
        if not path.is_relative_to(self.repo):
            self.add(where, f"{written!r} resolves to {path}, outside the repository")
            return None
        return path


def _build(
    raw: dict[str, Any], config_dir: Path, check: _Checker, check_files: bool
) -> BuildSpec | None:
    build = raw.get("build") or {}
    where: tuple[str, ...]
    if "dockerfile" in build:
        written, where = build["dockerfile"], ("build", "dockerfile")
    else:
        written, where = raw["dockerFile"], ("dockerFile",)
    context_where = ("build", "context") if "context" in build else ("context",)
    dockerfile = check.in_repo(where, written, config_dir)
    context = check.in_repo(
        context_where, build.get("context") or raw.get("context") or ".", config_dir
    )
    if dockerfile is None or context is None:
        return None
    if check_files and not dockerfile.is_file():
        shown = check.shown(dockerfile)
        check.add(where, f"Dockerfile not found: {written!r} resolves to {shown} ({dockerfile})")
    if check_files and not context.is_dir():
        check.add(
            context_where, f"build context is not a directory: {check.shown(context)} ({context})"
        )
    return BuildSpec(dockerfile, context, _frozen(build.get("args")), build.get("target"))


def _features(
    raw: dict[str, Any], config: Path, check: _Checker, check_files: bool
) -> list[FeatureRef]:
    refs: list[FeatureRef] = []
    local_root = check.repo / ".devcontainer"
    for key, value in (raw.get("features") or {}).items():
        try:
            ref = parse_feature_ref(key, value, config_dir=config.parent, local_root=local_root)
        except InvalidRequest as exc:
            check.add(("features", key), exc.message, key=True)
            continue
        if ref is None:
            continue
        if (
            check_files
            and ref.path is not None
            and not (ref.path / FEATURE_METADATA_NAME).is_file()
        ):
            shown = check.shown(ref.path)
            check.add(
                ("features", key),
                f"local feature {key}: no {FEATURE_METADATA_NAME} in {shown}",
                key=True,
            )
        refs.append(ref)
    names = {n for r in refs for n in (r.resource.lower(), r.ref.rstrip("/").lower())}
    for index, entry in enumerate(raw.get("overrideFeatureInstallOrder") or ()):
        if unversioned_id(entry) not in names:
            check.add(("overrideFeatureInstallOrder", index), f"{entry!r} is not in 'features'")
    return refs


def parse_devcontainer(
    text: str,
    *,
    config_path: Path,
    repo_dir: Path,
    local_env: Mapping[str, str] | None = None,
    devcontainer_id: str | None = None,
    check_files: bool = True,
) -> DevContainerConfig:
    """Build the model from the text of ``config_path`` (a file inside ``repo_dir``).

    ``local_env`` feeds ``${localEnv:...}``: pass the user's variables, never
    the server's. ``devcontainer_id`` defaults to the spec's label-based id of
    the repository folder and config path. ``check_files=False`` skips the
    existence checks (Dockerfile, context, local Features), not the
    stay-inside-the-repository ones.
    """
    repo_dir = Path(repo_dir).resolve()
    config_path = Path(config_path).resolve()
    source = (
        config_path.relative_to(repo_dir).as_posix()
        if config_path.is_relative_to(repo_dir)
        else config_path.name
    )
    doc = parse_jsonc(text, source=source)
    check = _Checker(doc, repo_dir)
    if isinstance(doc.value, dict) and "dockerComposeFile" in doc.value:
        message = "Docker Compose configurations are not supported: use 'image' or 'build'"
        check.add(("dockerComposeFile",), message, key=True)
        raise issues_error(source, check.issues, what="unsupported configuration")
    issues, unknown = validate_devcontainer_schema(doc)
    if issues:
        raise issues_error(source, issues, what="does not match the Dev Container schema")
    raw: dict[str, Any] = doc.value

    unresolved: list[str] = []
    devcontainer_id = devcontainer_id or compute_devcontainer_id(
        {"devcontainer.local_folder": str(repo_dir), "devcontainer.config_file": str(config_path)}
    )
    context = SubstitutionContext(dict(local_env or {}), str(repo_dir), None, devcontainer_id)
    folder = raw.get("workspaceFolder")
    workspace_folder = (
        substitute(folder, context, unresolved) if folder else f"/workspaces/{repo_dir.name}"
    )
    if not PurePosixPath(workspace_folder).is_absolute():
        check.add(("workspaceFolder",), f"{workspace_folder!r} is not an absolute path")
    context = dataclasses.replace(context, container_workspace_folder=workspace_folder)
    config: dict[str, Any] = substitute(raw, context, unresolved)

    build = (
        _build(config, config_path.parent, check, check_files) if "image" not in config else None
    )
    features = _features(config, config_path, check, check_files)
    ports: list[ForwardPort] = []
    for index, entry in enumerate(config.get("forwardPorts") or ()):
        try:
            ports.append(parse_forward_port(entry))
        except ValueError as exc:
            check.add(("forwardPorts", index), str(exc))
    if check.issues:
        raise issues_error(source, check.issues)

    lifecycle = {}
    for hook in LifecycleHook:
        command = parse_lifecycle_command(hook, config.get(hook.value))
        if command is not None:
            lifecycle[hook] = command
    unsupported = unsupported_properties(config)
    remote_ports = [p for p in ports if not p.is_local]
    warnings = [w for w in [unsupported_warning(source, unsupported, unknown, remote_ports)] if w]
    if unresolved:
        warnings.append(f"{source}: unknown variables left as written: {', '.join(unresolved)}")
    other = config.get("otherPortsAttributes")
    return DevContainerConfig(
        config_path=config_path,
        repo_dir=repo_dir,
        workspace_folder=workspace_folder,
        devcontainer_id=devcontainer_id,
        name=config.get("name"),
        image=config.get("image"),
        build=build,
        features=tuple(features),
        override_feature_install_order=tuple(config.get("overrideFeatureInstallOrder") or ()),
        container_env=_frozen(config.get("containerEnv")),
        remote_env=_frozen(config.get("remoteEnv")),
        container_user=config.get("containerUser"),
        remote_user=config.get("remoteUser"),
        forward_ports=tuple(ports),
        ports_attributes=_frozen(
            {k: parse_port_attributes(v) for k, v in (config.get("portsAttributes") or {}).items()}
        ),
        other_ports_attributes=parse_port_attributes(other) if other is not None else None,
        lifecycle=_frozen(lifecycle),
        wait_for=LifecycleHook(config.get("waitFor", LifecycleHook.UPDATE_CONTENT.value)),
        host_requirements=parse_host_requirements(config.get("hostRequirements")),
        secrets=_frozen(
            {k: (v or {}).get("description") for k, v in (config.get("secrets") or {}).items()}
        ),
        customizations=_frozen(config.get("customizations")),
        unsupported=tuple(unsupported),
        unknown_properties=tuple(unknown),
        unresolved_variables=tuple(unresolved),
        warnings=tuple(warnings),
    )


def load_devcontainer(
    repo_dir: Path,
    *,
    config_path: str | Path | None = None,
    local_env: Mapping[str, str] | None = None,
    devcontainer_id: str | None = None,
    check_files: bool = True,
) -> DevContainerConfig | None:
    """Locate, read and parse the repository's configuration; ``None`` if it has none.

    ``config_path`` is the explicit choice (relative to ``repo_dir``; see
    :func:`~atelier.workspaces.locate.locate_devcontainer`).
    """
    path = locate_devcontainer(repo_dir, config_path)
    if path is None:
        return None
    source = path.relative_to(repo_dir).as_posix() if path.is_relative_to(repo_dir) else path.name
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValidationFailed(
                f"{source}: {size} bytes is larger than the {MAX_CONFIG_BYTES} allowed",
                details={"file": source},
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"{source}: cannot read: {exc}", details={"file": source}) from exc
    return parse_devcontainer(
        text,
        config_path=path,
        repo_dir=repo_dir,
        local_env=local_env,
        devcontainer_id=devcontainer_id,
        check_files=check_files,
    )
