"""clone()'s pure parts: ref resolution, argument and destination checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.errors import DirectoryNotEmpty, FileExists, GitRefNotFound, InvalidRequest
from atelier.git import clone
from atelier.git.clone import _check_ref, _parse_ls_remote, _resolve

A, B, C, T = "a" * 40, "b" * 40, "c" * 40, "d" * 40
LISTING = (
    f"ref: refs/heads/main\tHEAD\n{A}\tHEAD\n{A}\trefs/heads/main\n{B}\trefs/heads/dev\n"
    f"{T}\trefs/tags/v1\n{C}\trefs/tags/v1^{{}}\n{B}\trefs/tags/light\n{C}\trefs/pull/1/head\n"
)


def test_parse_ls_remote() -> None:
    remote = _parse_ls_remote(LISTING)
    assert remote.head == "refs/heads/main"
    assert remote.refs["refs/tags/v1"] == C  # peeled
    assert remote.refs["refs/heads/dev"] == B


@pytest.mark.parametrize(
    ("ref", "kind", "name", "sha"),
    [
        (None, "branch", "main", A),
        ("HEAD", "branch", "main", A),
        ("dev", "branch", "dev", B),
        ("v1", "tag", "v1", C),
        ("refs/heads/dev", "branch", "dev", B),
        ("refs/tags/light", "tag", "light", B),
        ("refs/pull/1/head", "ref", "refs/pull/1/head", C),
        ("E" * 40, "sha", "e" * 40, "e" * 40),
        ("cccc", "sha", C, C),  # abbreviation of an advertised tip
        ("123abc", "sha", "123abc", None),  # unknown abbreviation: fetch all, look up
    ],
)
def test_resolve(ref: str | None, kind: str, name: str, sha: str | None) -> None:
    target = _resolve(ref, _parse_ls_remote(LISTING))
    assert (target.kind, target.name, target.sha) == (kind, name, sha)


def test_resolve_missing_and_empty() -> None:
    with pytest.raises(GitRefNotFound):
        _resolve("nope", _parse_ls_remote(LISTING))
    with pytest.raises(GitRefNotFound):
        _resolve(None, _parse_ls_remote(""))


def test_detached_head_without_symref() -> None:
    target = _resolve(None, _parse_ls_remote(f"{A}\tHEAD\n"))
    assert (target.kind, target.sha) == ("sha", A)


@pytest.mark.parametrize("ref", ["", " main", "-b", "a..b", "a b", "a:b", "x\n", "m@{1}", "a~1"])
def test_bad_refs(ref: str) -> None:
    with pytest.raises(InvalidRequest):
        _check_ref(ref)


async def test_refusals_happen_before_any_git(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        await clone("file:///etc", tmp_path / "a")
    with pytest.raises(InvalidRequest):
        await clone("https://h/r", tmp_path / "a", depth=0)
    with pytest.raises(InvalidRequest):
        await clone("https://h/r", tmp_path / "a", timeout=0)
    with pytest.raises(InvalidRequest):
        await clone("https://h/r", tmp_path / "a", ref="--upload-pack=x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(DirectoryNotEmpty):
        await clone("https://h/r", tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExists):
        await clone("https://h/r", tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]
