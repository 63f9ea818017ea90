"""The JSON-with-comments parser: values, positions, and syntax errors with line/column."""

from __future__ import annotations

import json

import pytest

from atelier.errors import ValidationFailed
from atelier.workspaces.jsonc import Position, parse_jsonc

SAMPLE = """\ufeff// leading comment
{
  /* block
     comment */ "image": "debian:12", // trailing comment
  "forwardPorts": [3000, "db:5432",],
  "nested": {"a": {"b": [true, false, null, -1.5e3, 0]},},
  "url": "http://example.com/*not a comment*/ // nor this",
}
"""


def test_parses_comments_and_trailing_commas() -> None:
    doc = parse_jsonc(SAMPLE)
    assert doc.value == {
        "image": "debian:12",
        "forwardPorts": [3000, "db:5432"],
        "nested": {"a": {"b": [True, False, None, -1500.0, 0]}},
        "url": "http://example.com/*not a comment*/ // nor this",
    }
    assert isinstance(doc.value["nested"]["a"]["b"][4], int)


def test_records_value_and_key_positions() -> None:
    doc = parse_jsonc(SAMPLE)
    assert doc.values[("image",)] == Position(4, 26)
    assert doc.keys[("image",)] == Position(4, 17)
    assert doc.values[("forwardPorts", 1)] == Position(5, 26)
    assert doc.values[("nested", "a", "b", 3)] == Position(6, 45)
    # an unknown path falls back to its nearest ancestor
    assert doc.position(("forwardPorts", 7)) == doc.values[("forwardPorts",)]
    assert doc.position(("image",), key=True) == Position(4, 17)


def test_agrees_with_json_on_plain_json() -> None:
    text = json.dumps({"a": ['\u00e9\n\t"', 1, 2.5, {"b": None}], "c": "\\u0041"}, indent=2)
    assert parse_jsonc(text).value == json.loads(text)


def test_duplicate_keys_keep_the_last_value() -> None:
    assert parse_jsonc('{"a": 1, "a": 2}').value == {"a": 2}


def test_crlf_line_endings_count_lines() -> None:
    doc = parse_jsonc('{\r\n  "a": 1,\r\n  "b": 2\r\n}')
    assert doc.values[("b",)] == Position(3, 8)


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"),
    [
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "expected ',' or '}'"),
        ('{"a": }', 1, 7, "expected a JSON value"),
        ('{\n  "a": "unterminated\n}', 2, 8, "unterminated string"),
        ('{"a": "tab\there"}', 1, 11, "control character in string"),
        ("{/* never closed", 1, 2, "unterminated /* comment"),
        ("", 1, 1, "empty document"),
        ("   // only a comment\n", 2, 1, "empty document"),
        ('{"a": 1}}', 1, 9, "after the top-level value"),
        ("{'a': 1}", 1, 2, "expected a property name in double quotes"),
        ("[1,,2]", 1, 4, "unexpected ','"),
        ('{"a": "\\q"}', 1, 8, "invalid \\escape"),
        ('{"a":\n  tru}', 2, 3, "expected a JSON value"),
        ('{"a" 1}', 1, 6, "expected ':'"),
        ("[1 2]", 1, 4, "expected ',' or ']'"),
        ('{"a": NaN}', 1, 7, "expected a JSON value"),
        ('{"a": 01}', 1, 8, "expected ',' or '}'"),
    ],
)
def test_syntax_errors_name_line_and_column(text: str, line: int, column: int, reason: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_jsonc(text, source=".devcontainer/devcontainer.json")
    err = info.value
    assert err.code == "validation_error"
    assert err.message.startswith(
        f".devcontainer/devcontainer.json: syntax error at line {line}, column {column}: "
    )
    assert reason in err.message
    assert err.details["file"] == ".devcontainer/devcontainer.json"
    [problem] = err.details["errors"]
    assert (problem["line"], problem["column"]) == (line, column)
    assert reason in problem["message"]


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ValidationFailed, match="nesting deeper"):
        parse_jsonc("[" * 1000 + "]" * 1000)
