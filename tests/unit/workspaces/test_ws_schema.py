"""Schema validation details: picking alternatives, unknown properties, issue formatting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from atelier.workspaces.issues import ConfigIssue, format_path, issues_error
from atelier.workspaces.jsonc import parse_jsonc
from atelier.workspaces.schema import (
    SCHEMA_DIR,
    validate_devcontainer_schema,
    validate_feature_schema,
)


def check(config: Any) -> tuple[list[str], list[str]]:
    issues, unknown = validate_devcontainer_schema(parse_jsonc(json.dumps(config, indent=1)))
    return sorted(f"{format_path(i.path)}: {i.message}" for i in issues), unknown


def test_schemas_are_the_spec_files() -> None:
    base = json.loads((SCHEMA_DIR / "devContainer.base.schema.json").read_text())
    feature = json.loads((SCHEMA_DIR / "devContainerFeature.schema.json").read_text())
    assert base["$schema"] == "https://json-schema.org/draft/2019-09/schema"
    assert feature["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize(
    "config",
    [
        {"image": "debian:12"},
        {"build": {"dockerfile": "Dockerfile", "context": "..", "args": {}, "target": "t"}},
        {"dockerFile": "Dockerfile", "context": "..", "build": {"args": {"A": "b"}}},
        {"image": "x", "forwardPorts": [1, "db:5432"], "hostRequirements": {"gpu": {"cores": 2}}},
        {
            "image": "x",
            "mounts": ["type=bind,source=/a,target=/b", {"type": "volume", "target": "/c"}],
        },
        {
            "image": "x",
            "secrets": {"API_KEY": {"description": "d", "documentationUrl": "https://x"}},
        },
    ],
)
def test_valid_configurations(config: Any) -> None:
    assert check(config) == ([], [])


def test_alternatives_are_chosen_by_the_instance_type() -> None:
    errors, _ = check(
        {
            "image": "x",
            "hostRequirements": {"gpu": "maybe"},
            "mounts": [{"type": "bind"}, 5],
            "forwardPorts": ["UPPER:80"],
        }
    )
    assert errors == [
        "forwardPorts[0]: 'UPPER:80' is not a port: a number, or \"host:port\""
        " with a lower-case host",
        "hostRequirements.gpu: 'maybe' is not one of [True, False, 'optional']",
        "mounts[0]: 'target' is a required property",
        "mounts[1]: 5 is not valid: it is not of type 'object'; and it is not of type 'string'",
    ]


def test_nested_unknown_properties_are_errors_top_level_ones_are_returned() -> None:
    errors, unknown = check({"image": "x", "hostRequirements": {"ram": "1gb"}, "extensions": []})
    assert errors == [
        "hostRequirements.ram: unknown property (allowed here: cpus, gpu, memory, storage)"
    ]
    assert unknown == ["extensions"]


def test_secret_names_follow_the_pattern() -> None:
    errors, _ = check({"image": "x", "secrets": {"1BAD": {}}})
    assert errors == ['secrets["1BAD"]: property name does not match ^[a-zA-Z_][a-zA-Z0-9_]*$']


def test_feature_option_alternatives() -> None:
    doc = parse_jsonc(
        json.dumps(
            {
                "id": "x",
                "version": "1",
                "options": {
                    "o": {"type": "string", "default": "a", "enum": ["a"], "proposals": ["b"]}
                },
            }
        )
    )
    issues, _ = validate_feature_schema(doc)
    [issue] = issues
    assert format_path(issue.path) == "options.o"
    assert (
        "has unknown properties 'proposals'; and it has unknown properties 'enum'" in issue.message
    )


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), ""),
        (("build", "dockerfile"), "build.dockerfile"),
        (("forwardPorts", 2), "forwardPorts[2]"),
        (("features", "ghcr.io/x/y:1", "version"), 'features["ghcr.io/x/y:1"].version'),
        (("a", 'q"uote'), 'a["q\\"uote"]'),
        ((0, "x"), "[0].x"),
    ],
)
def test_format_path(path: tuple[str | int, ...], text: str) -> None:
    assert format_path(path) == text


def test_issues_error_sorts_and_caps_the_message() -> None:
    issues = [ConfigIssue(("k", i), f"bad {i}", 100 - i, 1) for i in range(25)]
    err = issues_error("f.json", issues, what="broken")
    assert err.message.startswith("f.json: broken (25 problems): line 76: k[24]: bad 24; line 77:")
    assert err.message.endswith("; and 5 more")
    assert len(err.details["errors"]) == 25
    assert err.details["errors"][0] == {
        "path": "k[24]",
        "message": "bad 24",
        "line": 76,
        "column": 1,
    }
    assert ConfigIssue((), "whole file").describe() == "whole file"
    assert ConfigIssue(("a",), "m").to_dict() == {"path": "a", "message": "m"}
