"""Dev Container Features: references, metadata, options.

A ``features`` entry in ``devcontainer.json`` is ``"<ref>": <options>`` where
``<ref>`` is one of

* ``./path`` (or ``../path``) — a folder in the repository, relative to the
  ``devcontainer.json``'s folder, that must stay inside ``.devcontainer/``;
* ``registry/namespace/name[:tag|@sha256:...]`` — an OCI artifact
  (``ghcr.io/devcontainers/features/node:1``; no tag means ``latest``);
* ``https://.../devcontainer-feature-x.tgz`` — a tarball.

and ``<options>`` an object, a string (shorthand for ``{"version": ...}``),
``true`` (defaults) or ``false`` (disabled). The Feature's
``devcontainer-feature.json`` declares its options; :func:`resolve_feature_options`
merges the user's values over the defaults and names the environment
variables ``install.sh`` reads (:func:`option_env_name`, the spec's rule).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from atelier.errors import InvalidRequest, ValidationFailed
from atelier.workspaces.issues import ConfigIssue, issues_error
from atelier.workspaces.jsonc import parse_jsonc
from atelier.workspaces.lifecycle import LifecycleCommand, LifecycleHook, parse_lifecycle_command
from atelier.workspaces.schema import validate_feature_schema

__all__ = [
    "FEATURE_METADATA_NAME",
    "FeatureKind",
    "FeatureMetadata",
    "FeatureOption",
    "FeatureRef",
    "OptionValue",
    "ResolvedOptions",
    "load_feature_metadata",
    "option_env_name",
    "parse_feature_metadata",
    "parse_feature_ref",
    "resolve_feature_options",
]

FEATURE_METADATA_NAME = "devcontainer-feature.json"
OptionValue = str | bool

_REGISTRY = re.compile(
    r"^(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|[A-Za-z0-9-]+:\d+)(?::\d+)?$"
)
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
# Features' own properties Atelier does not apply (warned about, never silently dropped)
_UNSUPPORTED_FEATURE_KEYS = ("privileged", "capAdd", "securityOpt", "mounts")
_FEATURE_LIFECYCLE = tuple(h for h in LifecycleHook if h is not LifecycleHook.INITIALIZE)


class FeatureKind(enum.StrEnum):
    LOCAL = "local"
    OCI = "oci"
    TARBALL = "tarball"


@dataclass(frozen=True)
class FeatureRef:
    """One ``features`` entry: where the Feature comes from and the user's options."""

    kind: FeatureKind
    ref: str  # as written in devcontainer.json
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    path: Path | None = None  # LOCAL: the resolved folder
    registry: str | None = None  # OCI: "ghcr.io"
    repository: str | None = None  # OCI: "devcontainers/features/node"
    tag: str | None = None  # OCI: "1" (None with a digest)
    digest: str | None = None  # OCI: "sha256:..."

    @property
    def resource(self) -> str:
        """The reference without version, as installsAfter and overrides name it."""
        if self.kind is FeatureKind.OCI:
            return f"{self.registry}/{self.repository}"
        return self.ref.rstrip("/")

    @property
    def id(self) -> str:
        """The Feature's short id: the last path component (``node``)."""
        if self.kind is FeatureKind.TARBALL:
            name = self.ref.rsplit("/", 1)[-1].split("?", 1)[0]
            return name.removeprefix("devcontainer-feature-").removesuffix(".tgz")
        return self.resource.rsplit("/", 1)[-1]

    @property
    def version(self) -> str:
        """The OCI tag or digest asked for (``latest`` when none), else ``""``."""
        if self.kind is not FeatureKind.OCI:
            return ""
        return self.digest or self.tag or "latest"


def _options(ref: str, value: Any) -> dict[str, OptionValue] | None:
    if value is False:
        return None
    if value is True or value is None:
        return {}
    if isinstance(value, str):
        return {"version": value}
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"feature {ref}: options must be an object, a version string or a boolean",
            details={"feature": ref},
        )
    out: dict[str, OptionValue] = {}
    for key, option in value.items():
        if isinstance(option, bool | str):
            out[key] = option
        elif isinstance(option, int | float):
            out[key] = str(option)
        else:
            raise InvalidRequest(
                f"feature {ref}: option {key!r} must be a string or a boolean",
                details={"feature": ref, "option": key},
            )
    return out


def parse_feature_ref(
    ref: str, value: Any = None, *, config_dir: Path | None = None, local_root: Path | None = None
) -> FeatureRef | None:
    """Parse one ``features`` entry; ``None`` when its value is ``false`` (disabled).

    A local reference is resolved against ``config_dir`` (the folder of the
    ``devcontainer.json``) and must stay inside ``local_root`` (the
    repository's ``.devcontainer`` folder), symlinks included. Raises
    :class:`~atelier.errors.InvalidRequest` for an unusable reference.
    """
    options = _options(ref, value)
    if options is None:
        return None
    if ref.startswith(("./", "../")):
        if config_dir is None:
            return FeatureRef(FeatureKind.LOCAL, ref, options)
        path = (config_dir / ref).resolve()
        root = (local_root or config_dir).resolve()
        if not path.is_relative_to(root):
            raise InvalidRequest(
                f"local feature {ref} resolves to {path}, outside {root}: local Features "
                "must live in the repository's .devcontainer folder",
                details={"feature": ref, "path": str(path)},
            )
        return FeatureRef(FeatureKind.LOCAL, ref, options, path=path)
    if ref.startswith("https://"):
        return FeatureRef(FeatureKind.TARBALL, ref, options)
    if ref.startswith("http://"):
        raise InvalidRequest(
            f"feature {ref}: tarball URLs must use https", details={"feature": ref}
        )
    return _parse_oci(ref, options)


def _parse_oci(ref: str, options: dict[str, OptionValue]) -> FeatureRef:
    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(f"feature {ref}: {why}", details={"feature": ref})

    name, _, digest = ref.partition("@")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    parts = name.split("/")
    if len(parts) < 2 or not _REGISTRY.match(parts[0]):
        example = f"ghcr.io/devcontainers/features/{parts[-1] or 'node'}:1"
        raise bad(
            "not a local path, an https URL or an OCI reference (registry/namespace/name); "
            f"legacy short ids and GitHub-release references are not supported: try {example}"
        )
    registry, repository = parts[0].lower(), "/".join(parts[1:]).lower()
    if not all(_COMPONENT.match(c) for c in repository.split("/")):
        raise bad(f"{repository!r} is not a valid OCI repository name")
    if tag is not None and not _TAG.match(tag):
        raise bad(f"{tag!r} is not a valid tag")
    if digest and not _DIGEST.match(digest):
        raise bad(f"{digest!r} is not a valid digest (sha256:<64 hex digits>)")
    return FeatureRef(
        FeatureKind.OCI,
        ref,
        options,
        registry=registry,
        repository=repository,
        tag=tag,
        digest=digest or None,
    )


# --- metadata -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FeatureOption:
    id: str
    type: Literal["boolean", "string"]
    default: OptionValue
    description: str | None = None
    enum: tuple[str, ...] | None = None  # the only values allowed
    proposals: tuple[str, ...] | None = None  # suggestions; any string is allowed


@dataclass(frozen=True)
class FeatureMetadata:
    """A parsed ``devcontainer-feature.json``."""

    id: str
    version: str
    name: str | None = None
    description: str | None = None
    options: Mapping[str, FeatureOption] = field(default_factory=dict)
    container_env: Mapping[str, str] = field(default_factory=dict)
    installs_after: tuple[str, ...] = ()
    depends_on: Mapping[str, Any] = field(default_factory=dict)  # ref -> options, as written
    entrypoint: str | None = None
    lifecycle: Mapping[LifecycleHook, LifecycleCommand] = field(default_factory=dict)
    legacy_ids: tuple[str, ...] = ()
    deprecated: bool = False
    unsupported: tuple[str, ...] = ()  # properties present that Atelier does not apply
    warnings: tuple[str, ...] = ()


def parse_feature_metadata(text: str, *, source: str = FEATURE_METADATA_NAME) -> FeatureMetadata:
    """Parse and validate a ``devcontainer-feature.json`` (JSON with comments).

    Raises :class:`~atelier.errors.ValidationFailed` with every problem in
    ``details["errors"]``.
    """
    doc = parse_jsonc(text, source=source)
    if not isinstance(doc.value, dict):
        raise issues_error(source, [ConfigIssue((), "the metadata must be a JSON object", 1, 1)])
    issues, unknown = validate_feature_schema(doc)
    if issues:
        raise issues_error(source, issues, what="invalid Feature metadata")
    raw: dict[str, Any] = doc.value
    options = {
        key: FeatureOption(
            id=key,
            type=spec["type"],
            default=spec["default"],
            description=spec.get("description"),
            enum=tuple(spec["enum"]) if "enum" in spec else None,
            proposals=tuple(spec["proposals"]) if "proposals" in spec else None,
        )
        for key, spec in (raw.get("options") or {}).items()
    }
    lifecycle: dict[LifecycleHook, LifecycleCommand] = {}
    for hook in _FEATURE_LIFECYCLE:
        command = parse_lifecycle_command(hook, raw.get(hook.value))
        if command is not None:
            lifecycle[hook] = command
    unsupported = tuple(k for k in _UNSUPPORTED_FEATURE_KEYS if raw.get(k))
    warnings = []
    if unsupported or unknown:
        parts = [f"Atelier does not apply {', '.join(unsupported)}"] if unsupported else []
        parts += [f"unknown properties ignored: {', '.join(unknown)}"] if unknown else []
        warnings.append(f"Feature {raw['id']}: {'; '.join(parts)}")
    if raw.get("deprecated"):
        warnings.append(f"Feature {raw['id']} is deprecated")
    return FeatureMetadata(
        id=raw["id"],
        version=raw["version"],
        name=raw.get("name"),
        description=raw.get("description"),
        options=MappingProxyType(options),
        container_env=MappingProxyType(dict(raw.get("containerEnv") or {})),
        installs_after=tuple(raw.get("installsAfter") or ()),
        depends_on=MappingProxyType(dict(raw.get("dependsOn") or {})),
        entrypoint=raw.get("entrypoint"),
        lifecycle=MappingProxyType(lifecycle),
        legacy_ids=tuple(raw.get("legacyIds") or ()),
        deprecated=bool(raw.get("deprecated", False)),
        unsupported=unsupported,
        warnings=tuple(warnings),
    )


def load_feature_metadata(feature_dir: Path) -> FeatureMetadata:
    """Read ``<feature_dir>/devcontainer-feature.json``; a missing file is a ValidationFailed."""
    path = Path(feature_dir) / FEATURE_METADATA_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed(
            f"cannot read Feature metadata {path}: {exc}", details={"file": str(path)}
        ) from exc
    return parse_feature_metadata(text, source=str(path))


# --- options ------------------------------------------------------------------------
def option_env_name(option_id: str) -> str:
    """The spec's environment variable name for an option id.

    ``id.replace(/[^\\w_]/g, '_').replace(/^[\\d_]+/g, '_').toUpperCase()``:
    ``"version"`` → ``VERSION``, ``"install-tools"`` → ``INSTALL_TOOLS``,
    ``"2fa"`` → ``_FA``.
    """
    name = re.sub(r"[^A-Za-z0-9_]", "_", option_id)
    name = re.sub(r"^[0-9_]+", "_", name)
    return name.upper()


def _env_value(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


@dataclass(frozen=True)
class ResolvedOptions:
    """A Feature's options after merging: by option id, and as ``install.sh`` env."""

    values: Mapping[str, OptionValue]
    env: Mapping[str, str]
    unknown: tuple[str, ...] = ()  # user options the Feature does not declare (passed through)


def resolve_feature_options(
    metadata: FeatureMetadata, user_options: Mapping[str, OptionValue]
) -> ResolvedOptions:
    """Defaults overlaid with the user's values, checked against each option's type and enum.

    Options the Feature does not declare are passed through (as the reference
    implementation does) and listed in ``unknown``. Raises
    :class:`~atelier.errors.ValidationFailed` listing every bad value.
    """
    values: dict[str, OptionValue] = {key: opt.default for key, opt in metadata.options.items()}
    problems: list[dict[str, str]] = []
    for key, value in user_options.items():
        option = metadata.options.get(key)
        if option is None:
            values[key] = value
        elif option.type == "boolean":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if not isinstance(value, bool):
                problems.append({"option": key, "message": f"expects true or false, not {value!r}"})
            values[key] = value
        else:
            if not isinstance(value, str):
                problems.append({"option": key, "message": f"expects a string, not {value!r}"})
            elif option.enum is not None and value not in option.enum:
                allowed = ", ".join(repr(v) for v in option.enum)
                problems.append({"option": key, "message": f"{value!r} is not one of {allowed}"})
            values[key] = value
    if problems:
        listed = "; ".join(f"{p['option']}: {p['message']}" for p in problems)
        raise ValidationFailed(
            f"Feature {metadata.id}: invalid options: {listed}",
            details={"feature": metadata.id, "errors": problems},
        )
    env = {option_env_name(key): _env_value(value) for key, value in values.items()}
    unknown = tuple(k for k in user_options if k not in metadata.options)
    return ResolvedOptions(MappingProxyType(values), MappingProxyType(env), unknown)
