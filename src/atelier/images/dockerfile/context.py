"""The build context: ``.dockerignore``, source lookup, content hashes.

``.dockerignore`` follows Docker's pattern rules (``moby/patternmatcher``):
one pattern a line, ``#`` comments, blank lines ignored; patterns are
cleaned and relative to the context root (a leading ``/`` is dropped);
``*`` matches within one path element, ``?`` one character, ``[...]`` a
class, ``**`` any number of elements; a pattern that matches a directory
excludes everything below it; ``!pattern`` re-includes; the last matching
pattern wins.

COPY/ADD sources are looked up inside a root (the context, or another
stage's filesystem for ``COPY --from``). Symbolic links on the way are
followed *inside* that root: in the context a link leading outside it is
refused; in a stage's filesystem an absolute link is relative to its root
(as it would be inside the image). Inside a copied directory, links are
copied as links.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BuildContext",
    "ContextError",
    "Entry",
    "IgnoreMatcher",
    "Source",
    "collect_sources",
    "hash_sources",
    "resolve_in_root",
]

_MAX_LINKS = 40


class ContextError(ValueError):
    """A source that cannot be used (missing, outside the root, ...)."""


# -- .dockerignore ----------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(.*/)?")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ContextError(f"bad .dockerignore pattern {pattern!r}: unclosed [")
            body = pattern[i + 1 : end]
            if body.startswith("^"):
                body = "!" + body[1:]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out))


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    exclusion: bool  # a "!" rule: re-includes


class IgnoreMatcher:
    """Docker's ``.dockerignore`` semantics."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.rules: list[_Rule] = []
        for raw in patterns:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            cleaned = posixpath.normpath(line).lstrip("/")
            if cleaned in ("", "."):
                if exclusion:
                    continue
                cleaned = "**"
            self.rules.append(_Rule(cleaned, _pattern_regex(cleaned), exclusion))

    @classmethod
    def from_file(cls, path: Path) -> IgnoreMatcher:
        try:
            return cls(path.read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            return cls([])

    @property
    def has_exclusions(self) -> bool:
        return any(r.exclusion for r in self.rules)

    def ignored(self, rel: str) -> bool:
        """Whether the context path ``rel`` (``a/b/c``) is excluded."""
        rel = rel.strip("/")
        if not rel or rel == ".":
            return False
        parents = []
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parents.append("/".join(parts[:i]))
        matched = False
        for rule in self.rules:
            if rule.exclusion != matched:
                continue  # cannot change the outcome
            hit = rule.regex.match(rel) is not None or any(rule.regex.match(p) for p in parents)
            if hit:
                matched = not rule.exclusion
        return matched


# -- resolving paths inside a root ---------------------------------------------------


def resolve_in_root(
    root: Path, rel: str, *, follow_last: bool = True, absolute_links: bool = True
) -> str:
    """``rel`` resolved inside ``root``, following symlinks as if ``root`` were ``/``.

    Returns the resolved path relative to ``root`` (``""`` = the root). Parts
    that do not exist are kept as they are. ``absolute_links=False`` (the
    build context) refuses a link whose target is absolute or leaves the
    root; with True (an image) absolute targets are relative to ``root`` and
    ``..`` stops at it.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            elif not absolute_links:
                raise ContextError(f"{rel!r} points outside the build context")
            continue
        candidate = root.joinpath(*done, part)
        if (parts or follow_last) and candidate.is_symlink():
            hops += 1
            if hops > _MAX_LINKS:
                raise ContextError(f"too many levels of symbolic links in {rel!r}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                if not absolute_links:
                    raise ContextError(
                        f"{'/'.join([*done, part])!r} is a symbolic link to {target!r}, "
                        "outside the build context"
                    )
                done = []
            target_parts = [p for p in target.split("/") if p not in ("", ".")]
            if not absolute_links:
                depth = len(done)
                for p in target_parts:
                    depth += -1 if p == ".." else 1
                    if depth < 0:
                        raise ContextError(
                            f"{'/'.join([*done, part])!r} is a symbolic link to {target!r}, "
                            "outside the build context"
                        )
            parts = target_parts + parts
            continue
        done.append(part)
    return "/".join(done)


# -- sources ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    rel: str  # path inside the source ("" = the source itself)
    path: Path  # on the host
    kind: str  # "f" file, "d" directory, "l" symlink
    mode: int  # permission bits (07777)
    uid: int
    gid: int
    mtime: float
    link: str | None = None  # symlink target


@dataclass(frozen=True, slots=True)
class Source:
    name: str  # as matched, relative to the root ("dir/file.txt")
    is_dir: bool
    entries: tuple[Entry, ...]  # the source itself first, then its tree (sorted)

    @property
    def basename(self) -> str:
        return self.name.rstrip("/").rsplit("/", 1)[-1]


def _entry(rel: str, path: Path) -> Entry:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        kind, link = "l", os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        kind, link = "d", None
    elif stat.S_ISREG(st.st_mode):
        kind, link = "f", None
    else:
        raise ContextError(f"{path.name!r} is not a regular file, directory or link")
    return Entry(rel, path, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime, link)


class BuildContext:
    """A directory of build inputs, filtered by its ``.dockerignore``."""

    def __init__(self, root: Path, ignore: IgnoreMatcher | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.ignore = ignore or IgnoreMatcher([])

    @classmethod
    def load(cls, root: Path, dockerfile: Path | None = None) -> BuildContext:
        """The context at ``root`` with its ignore file: ``<Dockerfile>.dockerignore``
        next to the Dockerfile if there is one (as BuildKit), else ``.dockerignore``."""
        root = Path(os.path.abspath(root))
        if not root.is_dir():
            raise ContextError(f"build context {root} is not a directory")
        ignore_file = root / ".dockerignore"
        if dockerfile is not None:
            specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
            if specific.is_file():
                ignore_file = specific
        return cls(root, IgnoreMatcher.from_file(ignore_file))


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _walk(root: Path, top_rel: str, ignore: IgnoreMatcher | None) -> list[Entry]:
    """The tree below ``root/top_rel`` as entries relative to it (sorted, filtered)."""
    base = root / top_rel if top_rel else root
    found: list[Entry] = []

    def visit(dir_path: Path, rel: str) -> bool:
        """Add the children of ``dir_path``; True if any was included."""
        any_included = False
        try:
            names = sorted(os.listdir(dir_path))
        except OSError as exc:
            raise ContextError(f"cannot read {dir_path}: {exc.strerror}") from exc
        for name in names:
            child_rel = f"{rel}/{name}" if rel else name
            ctx_rel = f"{top_rel}/{child_rel}" if top_rel else child_rel
            path = dir_path / name
            excluded = ignore.ignored(ctx_rel) if ignore else False
            entry = _entry(child_rel, path)
            if entry.kind == "d":
                if excluded and not (ignore and ignore.has_exclusions):
                    continue
                mark = len(found)
                found.append(entry)
                inner = visit(path, child_rel)
                if excluded and not inner:
                    del found[mark]  # only kept for what an exception re-included
                    continue
                any_included = True
            elif not excluded:
                found.append(entry)
                any_included = True
        return any_included

    visit(base, "")
    return found


def collect_sources(
    root: Path, pattern: str, *, ignore: IgnoreMatcher | None, absolute_links: bool
) -> list[Source]:
    """The sources a COPY/ADD source ``pattern`` names inside ``root``.

    Wildcards (``*``, ``?``, ``[...]``) match path elements; the matches are
    sorted. ContextError if nothing matches or a path leaves the root.
    """
    cleaned = posixpath.normpath("/" + pattern).lstrip("/")
    if ".." in pattern.split("/") and posixpath.normpath(pattern).startswith(".."):
        raise ContextError(f"{pattern!r} is outside the build context")
    candidates: list[str] = [""]
    for part in cleaned.split("/") if cleaned else []:
        nxt: list[str] = []
        for cand in candidates:
            real = resolve_in_root(root, cand, absolute_links=absolute_links)
            if _has_glob(part):
                directory = root / real if real else root
                try:
                    names = sorted(os.listdir(directory))
                except OSError:
                    continue
                regex = _pattern_regex(part)
                nxt.extend(f"{cand}/{n}" if cand else n for n in names if regex.match(n))
            else:
                nxt.append(f"{cand}/{part}" if cand else part)
        candidates = nxt
    sources: list[Source] = []
    for cand in candidates:
        if ignore is not None and cand and ignore.ignored(cand):
            continue
        real = resolve_in_root(root, cand, absolute_links=absolute_links)
        path = root / real if real else root
        if not os.path.lexists(path):
            continue
        top = _entry("", path)
        if top.kind == "d":
            entries = [top, *_walk(root, real, ignore)]
            sources.append(Source(cand or ".", True, tuple(entries)))
        else:
            sources.append(Source(cand, False, (top,)))
    if not sources:
        why = " (or excluded by .dockerignore)" if ignore is not None and ignore.rules else ""
        raise ContextError(f"{pattern!r} not found{why}")
    return sources


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def iter_hash_records(sources: Iterable[Source]) -> Iterator[str]:
    for source in sources:
        yield f"source {source.name!r} dir={source.is_dir}"
        for e in source.entries:
            what = _file_digest(e.path) if e.kind == "f" else (e.link or "")
            yield f"{e.kind} {e.rel!r} {e.mode:o} {what}"


def hash_sources(sources: Iterable[Source]) -> str:
    """sha256 over each entry's path, type, mode, content and link target
    (not owner or times: COPY sets the owner, and times do not matter)."""
    h = hashlib.sha256()
    for record in iter_hash_records(sources):
        h.update(record.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()
