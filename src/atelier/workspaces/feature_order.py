"""The order Features install in: ``dependsOn``, ``installsAfter`` and the user's override.

The spec's round-based algorithm (``feature-dependencies.md``):

* a Feature can install once every Feature it ``dependsOn`` (hard) and every
  *present* Feature it ``installsAfter`` (soft) has installed;
* each round takes every installable Feature, keeps only those with the highest
  ``roundPriority`` and sorts them stably (resource name, then version, then
  more user options first, then option keys and values); the rest wait;
* ``overrideFeatureInstallOrder`` gives its i-th entry priority ``n - i``;
* a round that installs nothing means a cycle: an error naming it.

One deliberate refinement: a Feature's priority is passed on to what it
depends on (hard or soft), so putting a Feature first in
``overrideFeatureInstallOrder`` pulls its prerequisites forward with it
instead of letting lower-priority Features overtake it (devcontainers/cli#1200).

Hard dependencies must already be in the list (fetching them is the caller's
job): :func:`missing_dependencies` says which ones to fetch first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atelier.errors import InvalidRequest, ValidationFailed
from atelier.workspaces.features import FeatureKind, FeatureMetadata, FeatureRef, parse_feature_ref

__all__ = ["ResolvedFeature", "missing_dependencies", "order_features", "unversioned_id"]


@dataclass(frozen=True)
class ResolvedFeature:
    """A ``features`` entry together with the metadata read from the Feature itself."""

    ref: FeatureRef
    metadata: FeatureMetadata


def unversioned_id(name: str) -> str:
    """``ghcr.io/x/node:1`` → ``ghcr.io/x/node`` (a registry port is kept)."""
    name = name.split("@", 1)[0].rstrip("/")
    head, _, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}".lower() if head else last.lower()


def _names(feature: ResolvedFeature) -> set[str]:
    """Every name ``installsAfter``/overrides may use for this Feature."""
    names = {feature.ref.resource.lower(), feature.ref.ref.rstrip("/").lower()}
    short = {feature.metadata.id, *feature.metadata.legacy_ids}
    if feature.ref.kind is FeatureKind.OCI:
        namespace = feature.ref.resource.rsplit("/", 1)[0]
        names |= {f"{namespace}/{s}".lower() for s in short}
    return names | {s.lower() for s in short}


def _dependency_ref(
    ref: str, feature: ResolvedFeature, config_dir: Path | None
) -> FeatureRef | None:
    try:
        return parse_feature_ref(ref, {}, config_dir=config_dir, local_root=config_dir)
    except InvalidRequest as exc:
        raise ValidationFailed(
            f"Feature {feature.metadata.id}: bad dependsOn entry: {exc.message}",
            details={"feature": feature.metadata.id, "dependency": ref},
        ) from exc


def _dependency_name(ref: FeatureRef) -> str:
    return str(ref.path) if ref.path is not None else ref.resource.lower()


def _present(features: Sequence[ResolvedFeature]) -> dict[str, int]:
    present: dict[str, int] = {}
    for index, feature in enumerate(features):
        for name in _names(feature):
            present.setdefault(name, index)
        if feature.ref.path is not None:
            present.setdefault(str(feature.ref.path), index)
    return present


def missing_dependencies(
    features: Sequence[ResolvedFeature], *, config_dir: Path | None = None
) -> list[FeatureRef]:
    """The ``dependsOn`` references not yet among ``features`` (fetch them, add them, repeat)."""
    present = _present(features)
    missing: dict[str, FeatureRef] = {}
    for feature in features:
        for ref, options in feature.metadata.depends_on.items():
            parsed = _dependency_ref(ref, feature, config_dir)
            if parsed is None or _dependency_name(parsed) in present:
                continue
            full = parse_feature_ref(ref, options, config_dir=config_dir, local_root=config_dir)
            if full is not None:
                missing.setdefault(_dependency_name(parsed), full)
    return list(missing.values())


def _version_key(ref: FeatureRef) -> tuple[int, tuple[int, ...], str]:
    version = ref.version
    if version in ("", "latest"):
        return (1, (), "")
    numbers = (
        tuple(int(n) for n in re.findall(r"\d+", version)) if re.match(r"^\d", version) else ()
    )
    return (0, numbers, version)


def _sort_key(feature: ResolvedFeature) -> tuple[object, ...]:
    options = feature.ref.options
    keys = sorted(options)
    return (
        feature.ref.resource.lower(),
        _version_key(feature.ref),
        -len(options),
        keys,
        [str(options[k]) for k in keys],
        feature.ref.ref,
    )


def order_features(
    features: Sequence[ResolvedFeature],
    override_order: Sequence[str] = (),
    *,
    config_dir: Path | None = None,
) -> list[ResolvedFeature]:
    """``features`` in install order. ``config_dir`` resolves local ``dependsOn`` paths.

    Raises :class:`~atelier.errors.ValidationFailed` for a missing hard
    dependency, an override naming no Feature, or a dependency cycle.
    """
    present = _present(features)
    edges: list[set[int]] = [set() for _ in features]  # index -> what must install before it
    for index, feature in enumerate(features):
        for ref in feature.metadata.depends_on:
            parsed = _dependency_ref(ref, feature, config_dir)
            target = present.get(_dependency_name(parsed)) if parsed else None
            if target is None:
                raise ValidationFailed(
                    f"Feature {feature.metadata.id} depends on {ref}, which is not in the set of "
                    "Features to install",
                    details={"feature": feature.metadata.id, "dependency": ref},
                )
            if target != index:
                edges[index].add(target)
        for name in feature.metadata.installs_after:
            target = present.get(unversioned_id(name))
            if target is not None and target != index:
                edges[index].add(target)

    priority = [0] * len(features)
    for position, entry in enumerate(override_order):
        target = present.get(unversioned_id(entry))
        if target is None:
            raise ValidationFailed(
                f"overrideFeatureInstallOrder names {entry!r}, which is not in 'features'",
                details={"property": "overrideFeatureInstallOrder", "entry": entry},
            )
        priority[target] = max(priority[target], len(override_order) - position)
    changed = True
    while changed:  # pass priorities on to prerequisites (terminates: values only grow, bounded)
        changed = False
        for index, before in enumerate(edges):
            for target in before:
                if priority[target] < priority[index]:
                    priority[target] = priority[index]
                    changed = True

    done: set[int] = set()
    order: list[ResolvedFeature] = []
    waiting = list(range(len(features)))
    while waiting:
        ready = [i for i in waiting if edges[i] <= done]
        if not ready:
            raise _cycle_error(features, edges, waiting)
        top = max(priority[i] for i in ready)
        chosen = sorted(
            (i for i in ready if priority[i] == top), key=lambda i: _sort_key(features[i])
        )
        order.extend(features[i] for i in chosen)
        done.update(chosen)
        waiting = [i for i in waiting if i not in done]
    return order


def _cycle_error(
    features: Sequence[ResolvedFeature], edges: list[set[int]], waiting: list[int]
) -> ValidationFailed:
    pending = set(waiting)
    path: list[int] = []
    node = waiting[0]
    while node not in path:  # every waiting node has a waiting prerequisite: walk until a repeat
        path.append(node)
        node = min(edges[node] & pending)
    cycle = [*path[path.index(node) :], node]
    names = [features[i].ref.ref for i in cycle]
    return ValidationFailed(
        "Feature dependency cycle: "
        + " → ".join(names)
        + " (each needs the next one installed first)",
        details={"cycle": names},
    )
