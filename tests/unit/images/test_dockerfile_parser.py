"""Dockerfile syntax and Docker's substitution rules (no build, no root)."""

from __future__ import annotations

import pytest

from atelier.errors import InvalidDockerfile
from atelier.images.dockerfile.parser import parse_dockerfile
from atelier.images.dockerfile.substitution import (
    SubstitutionError,
    expand_word,
    expand_words,
    split_words,
)

# -- syntax ----------------------------------------------------------------------------


def test_instructions_comments_continuations_and_case() -> None:
    df = parse_dockerfile(
        "# a comment\n"
        "\n"
        "from base as Build\n"
        "run echo one \\\n"
        "  # a comment inside a continuation vanishes\n"
        "\n"
        "    two\n"
        "Copy --chown=user:user --chmod=0644 a b /dst/\n"
        'CMD ["sleep", "1"]\n'
    )
    (stage,) = df.stages
    assert stage.name == "build"
    assert stage.from_.line == 3
    run, copy, cmd = stage.instructions
    assert (run.keyword, run.line, run.args) == ("RUN", 4, "echo one     two")
    assert run.json_args is None
    assert copy.keyword == "COPY" and copy.line == 8
    assert copy.flags == {"chown": "user:user", "chmod": "0644"}
    assert copy.args == "a b /dst/"
    assert cmd.json_args == ("sleep", "1")


def test_exec_form_must_be_a_json_array_of_strings() -> None:
    df = parse_dockerfile('FROM base\nRUN ["echo", "hi"]\nRUN [not json]\nCMD ["a", 1]\n')
    a, b, c = df.stages[0].instructions
    assert a.json_args == ("echo", "hi")
    assert b.json_args is None  # shell form then
    assert c.json_args is None


def test_escape_directive_and_syntax_directive() -> None:
    df = parse_dockerfile(
        "# syntax=docker/dockerfile:1\n# escape=`\nFROM base\nRUN echo a `\n  b\n"
    )
    assert df.escape == "`"
    assert df.directives == {"syntax": "docker/dockerfile:1", "escape": "`"}
    assert df.stages[0].instructions[0].args == "echo a   b"


def test_directive_after_a_comment_is_a_comment() -> None:
    df = parse_dockerfile("# hello\n# escape=`\nFROM base\nRUN echo a \\\n b\n")
    assert df.escape == "\\"
    assert df.stages[0].instructions[0].args == "echo a  b"


def test_args_before_from_and_stages() -> None:
    df = parse_dockerfile(
        "ARG BASE=base\nARG OTHER\nFROM ${BASE} AS one\nRUN true\nFROM one\nCOPY --from=one /a /b\n"
    )
    assert [a.args for a in df.global_args] == ["BASE=base", "OTHER"]
    assert [s.label for s in df.stages] == ["one", "1"]
    assert df.stage("ONE") is df.stages[0]
    assert df.stage("1") is df.stages[1]
    assert df.stage("nope") is None


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("FROM base\nHEALTHCHECK CMD true\n", 2, "HEALTHCHECK is not supported"),
        ("FROM base\n\n# c\nONBUILD RUN true\n", 4, "ONBUILD is not supported"),
        ("FROM base\nFROBNICATE x\n", 2, "unknown instruction 'FROBNICATE'"),
        ("RUN true\nFROM base\n", 1, "RUN before the first FROM"),
        ("FROM base\nRUN --mount=type=cache,target=/x true\n", 2, "RUN --mount is not supported"),
        ("FROM base\nRUN --network=host true\n", 2, "builds have no network"),
        ("FROM base\nCOPY --link a /b\n", 2, "COPY --link is not supported"),
        ("FROM base\nCOPY --bogus=1 a /b\n", 2, "unknown flag --bogus"),
        ("FROM base\nADD --from=x a /b\n", 2, "unknown flag --from for ADD"),
        ("FROM base\nADD https://example.com/x.tgz /x\n", 2, "no network in builds"),
        ("FROM base\nADD git@github.com:a/b.git /x\n", 2, "not supported"),
        ("FROM base\nCOPY onlyone\n", 2, "at least one source and a destination"),
        ("FROM base\nSHELL /bin/bash -c\n", 2, "SHELL needs a JSON array"),
        ("FROM base\nENV a=1 b\n", 2, "cannot find '='"),
        ("FROM base\nENV ONLYNAME\n", 2, "needs a value"),
        ("FROM base\nARG 9bad\n", 2, "invalid ARG name"),
        ("FROM base\nRUN\n", 2, "RUN needs a command"),
        ("FROM base AS x\nFROM base AS X\n", 2, "duplicate stage name"),
        ("FROM base as\n", 1, "FROM takes an image"),
        ("# escape=x\nFROM base\n", 1, "invalid escape character"),
    ],
)
def test_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(InvalidDockerfile) as err:
        parse_dockerfile(text, file="Dockerfile.dev")
    assert err.value.message.startswith(f"Dockerfile.dev:{line}: "), err.value.message
    assert fragment in err.value.message
    assert err.value.status == 422


def test_no_from_at_all() -> None:
    with pytest.raises(InvalidDockerfile, match="no FROM"):
        parse_dockerfile("# only a comment\nARG X=1\n")


def test_volume_and_maintainer_are_accepted() -> None:
    df = parse_dockerfile("FROM base\nVOLUME /data\nMAINTAINER me\n")
    assert [i.keyword for i in df.stages[0].instructions] == ["VOLUME", "MAINTAINER"]


# -- substitution --------------------------------------------------------------------------

ENV = {"FOO": "bar", "EMPTY": "", "SPACED": "a b"}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$FOO", "bar"),
        ("${FOO}", "bar"),
        ("x${FOO}y", "xbary"),
        ("$FOO/baz", "bar/baz"),
        ("$UNSET", ""),
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${UNSET-dflt}", "dflt"),
        ("${FOO:-dflt}", "bar"),
        ("${FOO:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET:+alt}", ""),
        ("${UNSET:-$FOO}", "bar"),
        ("${UNSET:-a ${FOO} c}", "a bar c"),
        ("'$FOO'", "$FOO"),
        ('"$FOO"', "bar"),
        ('"a b"', "a b"),
        ("\\$FOO", "$FOO"),
        ('"\\$FOO"', "$FOO"),
        ('"a\\b"', "a\\b"),  # inside double quotes only \" \$ \\ are escapes
        ("a\\ b", "a b"),
        ("$", "$"),
        ("$/x", "$/x"),
        ("50$", "50$"),
    ],
)
def test_expand_word(word: str, expected: str) -> None:
    assert expand_word(word, ENV) == expected


def test_expand_word_with_backtick_escape() -> None:
    assert expand_word("`$FOO", ENV, escape="`") == "$FOO"
    assert expand_word("C:\\dir", ENV, escape="`") == "C:\\dir"


@pytest.mark.parametrize(
    ("word", "error"),
    [
        ("${UNSET:?must be set}", "must be set"),
        ("${EMPTY:?}", "EMPTY"),
        ("${FOO", "missing"),
        ("${}", "bad substitution"),
        ("${FOO%x}", "unsupported modifier"),
        ("'unterminated", "matching '"),
        ('"unterminated', 'matching "'),
    ],
)
def test_substitution_errors(word: str, error: str) -> None:
    with pytest.raises(SubstitutionError, match=error):
        expand_word(word, ENV)


def test_expand_words_splits_unquoted_values() -> None:
    assert expand_words('a "b c" $SPACED "$SPACED" d', ENV) == ["a", "b c", "a", "b", "a b", "d"]
    assert expand_words('"" x', ENV) == ["", "x"]
    assert expand_words("$UNSET x", ENV) == ["x"]


def test_split_words_keeps_quotes_for_name_value_pairs() -> None:
    assert split_words("A=\"x y\" B='$z' C=d\\ e") == ['A="x y"', "B='$z'", "C=d\\ e"]
