"""Feature install order: dependsOn, installsAfter, overrideFeatureInstallOrder, cycles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atelier.errors import ValidationFailed
from atelier.workspaces import (
    ResolvedFeature,
    missing_dependencies,
    order_features,
    parse_feature_metadata,
    parse_feature_ref,
)

NS = "ghcr.io/devcontainers/features"


def feature(ref: str, options: Any = None, **metadata: Any) -> ResolvedFeature:
    parsed = parse_feature_ref(ref, options if options is not None else {})
    assert parsed is not None
    meta = {"id": parsed.id, "version": "1.0.0", **metadata}
    return ResolvedFeature(parsed, parse_feature_metadata(json.dumps(meta)))


def ids(features: list[ResolvedFeature]) -> list[str]:
    return [f.ref.ref for f in features]


def test_without_constraints_the_order_is_sorted_and_stable() -> None:
    given = [feature(f"{NS}/zsh:1"), feature(f"{NS}/go:1"), feature(f"{NS}/node:1")]
    assert ids(order_features(given)) == [f"{NS}/go:1", f"{NS}/node:1", f"{NS}/zsh:1"]
    assert ids(order_features(list(reversed(given)))) == ids(order_features(given))


def test_round_stable_sort_tie_breaks() -> None:
    given = [
        feature(f"{NS}/node", {"a": "1"}),  # latest sorts after tagged versions
        feature(f"{NS}/node:10", {"a": "1"}),
        feature(f"{NS}/node:9", {"a": "1"}),
        feature(f"{NS}/node:9", {"a": "1", "b": "2"}),  # more options first
    ]
    ordered = order_features(given)
    assert [(f.ref.version, len(f.ref.options)) for f in ordered] == [
        ("9", 2),
        ("9", 1),
        ("10", 1),
        ("latest", 1),
    ]


def test_installs_after_is_honoured_without_version_and_only_when_present() -> None:
    given = [
        feature(f"{NS}/python:1", installsAfter=[f"{NS}/common-utils", f"{NS}/not-installed"]),
        feature(f"{NS}/common-utils:2"),
        feature(f"{NS}/aaa:1", installsAfter=[f"{NS}/python:1"]),  # a version is tolerated
    ]
    assert ids(order_features(given)) == [f"{NS}/common-utils:2", f"{NS}/python:1", f"{NS}/aaa:1"]


def test_installs_after_by_short_or_legacy_id() -> None:
    given = [
        feature(f"{NS}/b:1", installsAfter=["old-a"]),
        feature("ghcr.io/other/ns/a:1", legacyIds=["old-a"]),
    ]
    assert ids(order_features(given)) == ["ghcr.io/other/ns/a:1", f"{NS}/b:1"]


def test_depends_on_is_a_hard_dependency() -> None:
    given = [
        feature(f"{NS}/aaa:1", dependsOn={f"{NS}/zzz:2": {"opt": True}}),
        feature(f"{NS}/zzz:2"),
    ]
    assert ids(order_features(given)) == [f"{NS}/zzz:2", f"{NS}/aaa:1"]


def test_missing_hard_dependency() -> None:
    given = [
        feature(f"{NS}/aaa:1", dependsOn={f"{NS}/git:1": {"ppa": False}, f"{NS}/zzz": {}}),
        feature(f"{NS}/zzz:3"),
    ]
    [missing] = missing_dependencies(given)
    assert (missing.resource, missing.version, dict(missing.options)) == (
        f"{NS}/git",
        "1",
        {"ppa": False},
    )
    with pytest.raises(ValidationFailed) as info:
        order_features(given)
    assert info.value.details == {"feature": "aaa", "dependency": f"{NS}/git:1"}
    # once fetched and added, the order resolves
    given.append(feature(f"{NS}/git:1", {"ppa": False}))
    assert missing_dependencies(given) == []
    assert ids(order_features(given))[-1] == f"{NS}/aaa:1"


def test_local_dependencies(tmp_path: Path) -> None:
    root = tmp_path / ".devcontainer"
    a = parse_feature_ref("./a", {}, config_dir=root, local_root=root)
    b = parse_feature_ref("./b", {}, config_dir=root, local_root=root)
    assert a is not None and b is not None
    given = [
        ResolvedFeature(
            a, parse_feature_metadata('{"id": "a", "version": "1", "dependsOn": {"./b": {}}}')
        ),
        ResolvedFeature(b, parse_feature_metadata('{"id": "b", "version": "1"}')),
    ]
    assert ids(order_features(given, config_dir=root)) == ["./b", "./a"]


def test_override_order_comes_first() -> None:
    given = [feature(f"{NS}/a:1"), feature(f"{NS}/b:1"), feature(f"{NS}/c:1"), feature("./local")]
    ordered = order_features(given, [f"{NS}/c", "./local"])
    assert ids(ordered) == [f"{NS}/c:1", "./local", f"{NS}/a:1", f"{NS}/b:1"]


def test_override_pulls_prerequisites_forward() -> None:
    # devcontainers/cli#1200: use-tr (first) depends on common; remove-tr (second) must wait
    given = [
        feature("./features/use-tr", dependsOn={f"{NS}/common-utils:2": {}}),
        feature("./features/remove-tr"),
        feature(f"{NS}/common-utils:2"),
    ]
    ordered = order_features(given, ["./features/use-tr", "./features/remove-tr"])
    assert ids(ordered) == [f"{NS}/common-utils:2", "./features/use-tr", "./features/remove-tr"]


def test_override_must_name_a_feature() -> None:
    with pytest.raises(ValidationFailed, match="not in 'features'"):
        order_features([feature(f"{NS}/a:1")], [f"{NS}/nope"])


def test_cycles_are_named() -> None:
    given = [
        feature(f"{NS}/a:1", dependsOn={f"{NS}/b:1": {}}),
        feature(f"{NS}/b:1", installsAfter=[f"{NS}/c"]),
        feature(f"{NS}/c:1", dependsOn={f"{NS}/a:1": {}}),
        feature(f"{NS}/free:1"),
    ]
    with pytest.raises(ValidationFailed) as info:
        order_features(given)
    assert info.value.details["cycle"] == [f"{NS}/a:1", f"{NS}/b:1", f"{NS}/c:1", f"{NS}/a:1"]
    assert "dependency cycle" in info.value.message


def test_self_reference_is_not_a_cycle() -> None:
    given = [feature(f"{NS}/a:1", installsAfter=[f"{NS}/a"])]
    assert ids(order_features(given)) == [f"{NS}/a:1"]
