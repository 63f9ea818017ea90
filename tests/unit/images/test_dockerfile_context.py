"""The build context: .dockerignore semantics, source lookup, escaping links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atelier.images.dockerfile.context import (
    BuildContext,
    ContextError,
    IgnoreMatcher,
    collect_sources,
    resolve_in_root,
)


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        (["*.log"], "a.log", True),
        (["*.log"], "dir/a.log", False),  # * stays within one element
        (["**/*.log"], "dir/sub/a.log", True),
        (["**/*.log"], "a.log", True),
        (["dir"], "dir/sub/file", True),  # a directory excludes what is below it
        (["/dir/"], "dir/file", True),  # leading / and trailing / are cleaned
        (["./dir"], "dir/file", True),
        (["d?r"], "dir", True),
        (["d[a-j]r"], "dir", True),
        (["d[!a-j]r"], "dir", False),
        (["*", "!keep.txt"], "keep.txt", False),
        (["*", "!keep.txt"], "other.txt", True),
        (["*.txt", "!keep.txt", "keep.txt"], "keep.txt", True),  # the last match wins
        (["dir", "!dir/keep"], "dir/keep", False),
        (["dir", "!dir/keep"], "dir/other", True),
        (["# a comment", "", "  secret  "], "secret", True),
        (["**"], "anything/at/all", True),
        (["a/**/b"], "a/b", True),
        (["a/**/b"], "a/x/y/b", True),
        (["a/**/b"], "a/x/c", False),
        (["foo"], "foobar", False),
    ],
)
def test_dockerignore_semantics(patterns: list[str], path: str, ignored: bool) -> None:
    assert IgnoreMatcher(patterns).ignored(path) is ignored


def _tree(root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "a.py").write_text("a")
    (root / "src" / "pkg" / "b.log").write_text("b")
    (root / "src" / "keep.log").write_text("k")
    (root / "README").write_text("r")
    (root / "one.txt").write_text("1")
    (root / "two.txt").write_text("2")


def test_collect_directory_respects_ignore_and_exceptions(tmp_path: Path) -> None:
    _tree(tmp_path)
    ignore = IgnoreMatcher(["**/*.log", "!src/keep.log"])
    (source,) = collect_sources(tmp_path, "src", ignore=ignore, absolute_links=False)
    assert source.is_dir
    assert [e.rel for e in source.entries] == ["", "keep.log", "pkg", "pkg/a.py"]


def test_excluded_dir_kept_only_for_reincluded_files(tmp_path: Path) -> None:
    _tree(tmp_path)
    ignore = IgnoreMatcher(["src", "!src/pkg/a.py"])
    (source,) = collect_sources(tmp_path, ".", ignore=ignore, absolute_links=False)
    rels = [e.rel for e in source.entries]
    assert "src/pkg/a.py" in rels and "src/pkg" in rels and "src" in rels
    assert "src/keep.log" not in rels and "src/pkg/b.log" not in rels


def test_wildcards_match_sorted(tmp_path: Path) -> None:
    _tree(tmp_path)
    found = collect_sources(tmp_path, "*.txt", ignore=None, absolute_links=False)
    assert [s.name for s in found] == ["one.txt", "two.txt"]


def test_ignored_or_missing_source_is_an_error(tmp_path: Path) -> None:
    _tree(tmp_path)
    with pytest.raises(ContextError, match=r"excluded by \.dockerignore"):
        collect_sources(tmp_path, "README", ignore=IgnoreMatcher(["README"]), absolute_links=False)
    with pytest.raises(ContextError, match="not found"):
        collect_sources(tmp_path, "nope", ignore=None, absolute_links=False)


def test_parent_paths_are_refused(tmp_path: Path) -> None:
    _tree(tmp_path)
    with pytest.raises(ContextError, match="outside the build context"):
        collect_sources(tmp_path, "../etc/passwd", ignore=None, absolute_links=False)


def test_symlink_escaping_the_context_is_refused(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    (ctx / "abs").symlink_to("/etc/passwd")
    (ctx / "rel").symlink_to("../outside.txt")
    (ctx / "dirlink").symlink_to(tmp_path)
    for name in ("abs", "rel", "dirlink/outside.txt"):
        with pytest.raises(ContextError, match="outside the build context"):
            collect_sources(ctx, name, ignore=None, absolute_links=False)


def test_symlink_inside_the_context_is_followed_for_the_source(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("data")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link").symlink_to("../real.txt")
    (source,) = collect_sources(tmp_path, "sub/link", ignore=None, absolute_links=False)
    assert source.entries[0].kind == "f"
    assert source.entries[0].path == tmp_path / "real.txt"
    assert source.basename == "link"


def test_links_inside_a_copied_directory_stay_links(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "out").symlink_to("/etc/passwd")
    (source,) = collect_sources(tmp_path, "d", ignore=None, absolute_links=False)
    entry = source.entries[1]
    assert (entry.rel, entry.kind, entry.link) == ("out", "l", "/etc/passwd")


def test_resolve_in_root_treats_absolute_links_as_rooted(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "alt").symlink_to("/../../lib")
    assert resolve_in_root(tmp_path, "lib/x") == "usr/lib/x"
    assert resolve_in_root(tmp_path, "etc/alt/y") == "usr/lib/y"  # .. stops at the root
    assert resolve_in_root(tmp_path, "lib", follow_last=False) == "lib"


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("a\n")
    (tmp_path / "Dockerfile.dev").write_text("FROM base\n")
    (tmp_path / "Dockerfile.dev.dockerignore").write_text("b\n")
    ctx = BuildContext.load(tmp_path, tmp_path / "Dockerfile.dev")
    assert ctx.ignore.ignored("b") and not ctx.ignore.ignored("a")
    plain = BuildContext.load(tmp_path, tmp_path / "Dockerfile")
    assert plain.ignore.ignored("a") and not plain.ignore.ignored("b")


def test_context_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ContextError):
        BuildContext.load(tmp_path / "missing")


def test_modes_recorded(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    os.chmod(tmp_path / "x", 0o751)
    (source,) = collect_sources(tmp_path, "x", ignore=None, absolute_links=False)
    assert source.entries[0].mode == 0o751
