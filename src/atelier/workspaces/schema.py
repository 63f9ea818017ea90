"""Validation of ``devcontainer.json`` / ``devcontainer-feature.json`` against the spec's schemas.

The schemas (``schemas/*.json``, MIT, from devcontainers/spec) are loaded once
and validated with the draft their ``$schema`` declares (2019-09 for
``devcontainer.json``, draft 7 for features).

The raw schema is a ``oneOf`` of "image | Dockerfile | Compose" alternatives,
so a plain validator answers a typo in ``build.dockerfile`` with "... is not
valid under any of the given schemas". To point at the property instead we

1. pick the alternative ourselves from the keys present (``build``/``dockerFile``
   → Dockerfile, ``dockerComposeFile`` → Compose, ``image`` → image) and validate
   against that alternative alone;
2. for nested ``oneOf``/``anyOf`` (``forwardPorts`` items, ``hostRequirements.gpu``,
   feature options) descend into the alternative that got furthest;
3. drop ``unevaluatedProperties`` errors that only repeat another error (a
   failing sub-schema "un-evaluates" its siblings) and turn the rest into
   "unknown property" errors naming the allowed ones.

Unknown *top-level* properties are not errors: the reference implementation
ignores them (old files still carry VS Code's ``extensions``/``settings``); they
are returned separately so the caller can warn.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema import ValidationError  # type: ignore[import-untyped, unused-ignore]
from jsonschema.protocols import Validator  # type: ignore[import-untyped, unused-ignore]
from jsonschema.validators import validator_for  # type: ignore[import-untyped, unused-ignore]

from atelier.workspaces.issues import ConfigIssue
from atelier.workspaces.jsonc import JsoncDocument

__all__ = [
    "SCHEMA_DIR",
    "validate_devcontainer_schema",
    "validate_feature_schema",
]

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
_DEVCONTAINER = "devContainer.base.schema.json"
_FEATURE = "devContainerFeature.schema.json"
_MAX_MESSAGE = 300
# the schema's patterns, said in words
_PATTERN_HINTS = {
    r"^\d+([tgmk]b)?$": (
        "is not a size: a whole number of bytes, or of kb, mb, gb or tb (e.g. '8gb')"
    ),
    r"^([a-z0-9-]+):(\d{1,5})$": 'is not a port: a number, or "host:port" with a lower-case host',
}

# which definitions make up each alternative of the devcontainer.json schema
_VARIANTS: dict[str, tuple[str, ...]] = {
    "image": ("devContainerCommon", "nonComposeBase", "imageContainer"),
    "build": ("devContainerCommon", "nonComposeBase", "dockerfileContainer/oneOf/0"),
    "dockerFile": ("devContainerCommon", "nonComposeBase", "dockerfileContainer/oneOf/1"),
    "compose": ("devContainerCommon", "composeContainer"),
    "none": ("devContainerCommon", "nonComposeBase"),
}


@functools.cache
def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return loaded


def _make_validator(schema: dict[str, Any]) -> Validator:
    cls = validator_for(schema)
    cls.check_schema(schema)
    validator: Validator = cls(schema)
    return validator


@functools.cache
def _devcontainer_validator(variant: str) -> tuple[Validator, dict[str, Any]]:
    base = _load(_DEVCONTAINER)
    schema = {
        "$schema": base["$schema"],
        "definitions": base["definitions"],
        "type": "object",
        "allOf": [{"$ref": f"#/definitions/{name}"} for name in _VARIANTS[variant]],
    }
    return _make_validator(schema), schema


@functools.cache
def _feature_validator() -> tuple[Validator, dict[str, Any]]:
    base = _load(_FEATURE)
    definitions = copy.deepcopy(base["definitions"])
    definitions["Feature"].pop("additionalProperties", None)  # unknown keys: warnings
    schema = {
        "$schema": base["$schema"],
        "definitions": definitions,
        "allOf": [{"$ref": "#/definitions/Feature"}],
    }
    return _make_validator(schema), schema


def _variant_for(config: dict[str, Any]) -> str:
    if "dockerComposeFile" in config:
        return "compose"
    if "build" in config and not (
        "dockerFile" in config and "dockerfile" not in _obj(config["build"])
    ):
        return "build"
    if "dockerFile" in config:
        return "dockerFile"
    if "image" in config:
        return "image"
    return "none"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# --- what a schema declares ----------------------------------------------------------
def _resolve(ref: str, root: dict[str, Any]) -> Any:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _declared(
    schema: Any, root: dict[str, Any], seen: frozenset[int] = frozenset()
) -> tuple[set[str], list[str]]:
    """Property names and name patterns a schema declares, through $ref/allOf/anyOf/oneOf."""
    names: set[str] = set()
    patterns: list[str] = []
    if not isinstance(schema, dict) or id(schema) in seen:
        return names, patterns
    seen = seen | {id(schema)}
    names.update(_obj(schema.get("properties")))
    patterns.extend(_obj(schema.get("patternProperties")))
    subs: list[Any] = []
    if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
        subs.append(_resolve(schema["$ref"], root))
    for keyword in ("allOf", "anyOf", "oneOf"):
        subs.extend(schema.get(keyword) or [])
    for sub in subs:
        more_names, more_patterns = _declared(sub, root, seen)
        names |= more_names
        patterns.extend(more_patterns)
    return names, patterns


def _unknown_keys(instance: Any, schema: Any, root: dict[str, Any]) -> list[str]:
    if not isinstance(instance, dict):
        return []
    names, patterns = _declared(schema, root)
    return [k for k in instance if k not in names and not any(re.search(p, k) for p in patterns)]


# --- errors -> issues ----------------------------------------------------------------
def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _depth(error: ValidationError) -> int:
    return len(error.absolute_path)


def _phrase(leaf: ValidationError, root: dict[str, Any]) -> str:
    """A leaf error as a predicate about its instance: "is not of type 'integer'"."""
    if leaf.validator == "required":
        return (
            f"misses the required property {leaf.message.removesuffix(' is a required property')}"
        )
    if leaf.validator in ("unevaluatedProperties", "additionalProperties"):
        keys = ", ".join(repr(k) for k in _unknown_keys(leaf.instance, leaf.schema, root))
        return f"has unknown properties {keys}"
    message = str(leaf.message)
    for prefix in (repr(leaf.instance) + " ", _short(leaf.instance) + " "):
        if message.startswith(prefix):
            return message.removeprefix(prefix)
    return f"fails: {message}"


def _leaves(error: ValidationError, root: dict[str, Any]) -> list[ValidationError]:
    """The errors that say what is wrong, descending into the closest alternative.

    An alternative is closer when the instance has the type it expects (no
    ``type``/``const`` error on the instance itself), then when its errors are
    deeper, then when it has fewer of them. A tie on the instance itself yields
    one error listing what every alternative wanted.
    """
    if error.validator in ("unevaluatedProperties", "additionalProperties"):
        return [error] if _unknown_keys(error.instance, error.schema, root) else []
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        return [error]
    here = _depth(error)
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        index = sub.relative_schema_path[0]
        branches.setdefault(index if isinstance(index, int) else 0, []).extend(_leaves(sub, root))
    scored = []
    for index, leaves in branches.items():
        if not leaves:
            return []  # the alternative only failed through errors reported elsewhere
        mismatch = any(
            leaf.validator == "const" or (leaf.validator == "type" and _depth(leaf) == here)
            for leaf in leaves
        )
        scored.append(((mismatch, -min(map(_depth, leaves)), len(leaves)), index, leaves))
    scored.sort(key=lambda item: (item[0], item[1]))
    best_score, _, best = scored[0]
    tied = len(scored) > 1 and scored[1][0] == best_score
    if tied and -best_score[1] <= here:
        wanted = [
            ", and ".join(_phrase(leaf, root) for leaf in leaves)
            for score, _, leaves in scored
            if score[0] == best_score[0]
        ]
        error.message = f"{_short(error.instance)} is not valid: it " + "; and it ".join(wanted)
        return [error]
    return best


def _issues(
    errors: Iterable[ValidationError], doc: JsoncDocument, root: dict[str, Any]
) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    seen: set[tuple[tuple[str | int, ...], str]] = set()

    def add(path: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        if (path, message) in seen:
            return
        seen.add((path, message))
        at = doc.position(path, key=key)
        out.append(
            ConfigIssue(path, _clip(message), at.line if at else None, at.column if at else None)
        )

    for error in errors:
        for leaf in _leaves(error, root):
            path = tuple(leaf.absolute_path)
            if leaf.validator in ("unevaluatedProperties", "additionalProperties"):
                names, patterns = _declared(leaf.schema, root)
                for key in _unknown_keys(leaf.instance, leaf.schema, root):
                    if names:
                        add(
                            (*path, key),
                            f"unknown property (allowed here: {', '.join(sorted(names))})",
                            key=True,
                        )
                    else:
                        shown = (
                            " or ".join(p for p in patterns if p.startswith("^"))
                            or "the allowed names"
                        )
                        add((*path, key), f"property name does not match {shown}", key=True)
            elif leaf.validator == "pattern" and leaf.validator_value in _PATTERN_HINTS:
                add(path, f"{_short(leaf.instance)} {_PATTERN_HINTS[leaf.validator_value]}")
            else:
                add(path, leaf.message)
    return out


def validate_devcontainer_schema(doc: JsoncDocument) -> tuple[list[ConfigIssue], list[str]]:
    """Schema problems of a parsed ``devcontainer.json``, and its unknown top-level keys.

    Also reports the two structural rules the ``oneOf`` encodes: ``image`` and
    ``build``/``dockerFile`` exclude each other.
    """
    config = doc.value
    if not isinstance(config, dict):
        at = doc.position(())
        message = f"the configuration must be a JSON object, not {type(config).__name__}"
        return [ConfigIssue((), message, at.line if at else None, at.column if at else None)], []
    variant = _variant_for(config)
    validator, schema = _devcontainer_validator(variant)
    issues = _issues(validator.iter_errors(config), doc, schema)
    if variant == "none":
        at = doc.position(())
        message = "one of 'image' or 'build' (with 'dockerfile') is required"
        issues.append(ConfigIssue((), message, at.line if at else None, at.column if at else None))
    if variant in ("build", "dockerFile") and "image" in config:
        at = doc.position(("image",), key=True)
        message = "'image' and 'build' (a Dockerfile) exclude each other: use one of them"
        issues.append(
            ConfigIssue(("image",), message, at.line if at else None, at.column if at else None)
        )
    unknown = [k for k in _unknown_keys(config, schema, schema) if k != "image"]
    return issues, unknown


def validate_feature_schema(doc: JsoncDocument) -> tuple[list[ConfigIssue], list[str]]:
    """Schema problems of a parsed ``devcontainer-feature.json``, and its unknown top-level keys."""
    validator, schema = _feature_validator()
    config = doc.value
    issues = _issues(validator.iter_errors(config), doc, schema)
    return issues, _unknown_keys(config, schema, schema)
