"""Dockerfile syntax: lines, directives, continuations, instructions, stages.

What this module does (no substitution here: values depend on build args and
are expanded by the builder with :mod:`.substitution`):

* parser directives (``# escape=`` and ``# syntax=``; unknown ones are
  comments) are read only at the very top, before any comment, blank line
  or instruction;
* comment lines (first non-blank character ``#``) and blank lines are dropped,
  also inside a continued instruction;
* a line ending with the escape character (optionally followed by blanks)
  continues on the next line;
* instructions are case-insensitive; leading ``--flag=value`` options are
  split off and checked against the flags each instruction takes;
* the arguments are exec form (a JSON array of strings) or shell form;
* ``ARG`` may come before the first ``FROM`` (global args, usable in ``FROM``
  lines); anything else there is an error; instructions are grouped into
  stages, each named by ``FROM ... AS name`` or numbered.

Every error is :class:`~atelier.errors.InvalidDockerfile` naming ``file:line``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InvalidDockerfile
from .substitution import split_words

__all__ = [
    "SUPPORTED",
    "Dockerfile",
    "Instruction",
    "Stage",
    "parse_dockerfile",
    "read_dockerfile",
]

SUPPORTED = frozenset(
    {
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "ENTRYPOINT",
        "CMD",
        "EXPOSE",
        "LABEL",
        "SHELL",
        "STOPSIGNAL",
        "VOLUME",  # accepted, ignored with a warning (sandboxes have one disk)
        "MAINTAINER",  # deprecated; recorded as the "maintainer" label
    }
)
_UNSUPPORTED = {
    "HEALTHCHECK": "health checks are not supported by Atelier templates",
    "ONBUILD": "ONBUILD triggers are not supported",
}
_FLAGS: Mapping[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"network"}),
    "COPY": frozenset({"chown", "chmod", "from"}),
    "ADD": frozenset({"chown", "chmod"}),
}
_FLAG_HINTS = {
    "mount": "RUN --mount is not supported (no BuildKit cache/secret mounts)",
    "link": "COPY --link is not supported",
    "checksum": "ADD --checksum is not supported (ADD of URLs is not supported)",
}
_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
_STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str  # upper case: "RUN"
    line: int  # 1-based line of the keyword
    original: str  # the instruction as written (continuations joined)
    flags: Mapping[str, str]  # --name=value options (name without dashes)
    args: str  # the text after keyword and flags
    json_args: tuple[str, ...] | None  # exec form: the JSON array, else None
    file: str = "Dockerfile"

    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def error(self, message: str) -> InvalidDockerfile:
        return InvalidDockerfile(
            f"{self.where()}: {message}",
            details={"file": self.file, "line": self.line, "instruction": self.keyword},
        )


@dataclass(frozen=True, slots=True)
class Stage:
    index: int
    name: str | None  # lower-cased ``AS`` name
    from_: Instruction
    instructions: tuple[Instruction, ...]

    @property
    def label(self) -> str:
        return self.name or str(self.index)


@dataclass(frozen=True, slots=True)
class Dockerfile:
    file: str
    escape: str
    directives: Mapping[str, str]
    global_args: tuple[Instruction, ...]
    stages: tuple[Stage, ...]
    instructions: tuple[Instruction, ...] = field(default=())

    def stage(self, ref: str) -> Stage | None:
        """The stage named ``ref`` (case-insensitive) or with index ``ref``."""
        low = ref.lower()
        for stage in self.stages:
            if stage.name == low:
                return stage
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None


def read_dockerfile(path: Path, display: str | None = None) -> Dockerfile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidDockerfile(
            f"Dockerfile {path} not found", details={"file": str(path)}
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidDockerfile(f"cannot read Dockerfile {path}: {exc}") from exc
    return parse_dockerfile(text, file=display or path.name)


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    """Parser directives at the top, and the index of the first other line."""
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        match = _DIRECTIVE_RE.match(line.strip())
        if not match or not line.lstrip().startswith("#"):
            return found, i
        key = match.group(1).lower()
        if key in found:
            raise InvalidDockerfile(f"Dockerfile:{i + 1}: directive {key!r} given twice")
        found[key] = match.group(2)
    return found, len(lines)


def _logical_lines(lines: list[str], start: int, escape: str) -> list[tuple[int, str]]:
    """(first line number, joined text) of each instruction."""
    cont = re.compile(re.escape(escape) + r"[ \t]*$")
    out: list[tuple[int, str]] = []
    parts: list[str] = []
    first = 0
    for number, raw in enumerate(lines[start:], start + 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines vanish, also inside a continuation
        text = raw if parts else raw.lstrip()
        match = cont.search(text)
        if not parts:
            first = number
        if match:
            parts.append(text[: match.start()])
            continue
        parts.append(text.rstrip("\r"))
        out.append((first, "".join(parts)))
        parts = []
    if parts:
        out.append((first, "".join(parts)))  # a trailing continuation ends the file
    return out


def _json_form(text: str) -> tuple[str, ...] | None:
    stripped = text.strip()
    if not stripped.startswith("["):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _split_flags(keyword: str, text: str, file: str, line: int) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    rest = text.lstrip()
    while rest.startswith("--"):
        word, _, remainder = rest.partition(" ")
        name, eq, value = word[2:].partition("=")
        name = name.lower()
        where = f"{file}:{line}"
        if name in _FLAG_HINTS:
            raise InvalidDockerfile(f"{where}: {_FLAG_HINTS[name]}", details={"line": line})
        if name not in _FLAGS.get(keyword, frozenset()):
            raise InvalidDockerfile(
                f"{where}: unknown flag --{name} for {keyword}", details={"line": line}
            )
        if not eq or not value:
            raise InvalidDockerfile(f"{where}: flag --{name} needs a value", details={"line": line})
        if name in flags:
            raise InvalidDockerfile(f"{where}: flag --{name} given twice", details={"line": line})
        flags[name] = value
        rest = remainder.lstrip()
    return flags, rest


def _check(ins: Instruction, escape: str) -> None:
    """Syntax checks that need no substitution."""
    kw, args = ins.keyword, ins.args.strip()
    if kw in ("RUN", "CMD", "ENTRYPOINT") and not args:
        raise ins.error(f"{kw} needs a command")
    if kw == "SHELL" and (ins.json_args is None or not ins.json_args):
        raise ins.error('SHELL needs a JSON array, e.g. SHELL ["/bin/bash", "-c"]')
    if kw in ("COPY", "ADD"):
        words = list(ins.json_args) if ins.json_args is not None else split_words(args, escape)
        if len(words) < 2:
            raise ins.error(f"{kw} needs at least one source and a destination")
        if kw == "ADD":
            for word in words[:-1]:
                check_add_source(ins, word)
    if kw in ("WORKDIR", "USER", "STOPSIGNAL", "MAINTAINER") and not args:
        raise ins.error(f"{kw} needs an argument")
    if kw in ("EXPOSE", "ARG", "VOLUME") and not args:
        raise ins.error(f"{kw} needs at least one argument")
    if kw in ("ENV", "LABEL"):
        pairs(ins, escape)
    if kw == "ARG":
        for word in split_words(args, escape):
            name = word.partition("=")[0]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ins.error(f"invalid ARG name {name!r}")
    if kw == "RUN" and ins.flags.get("network", "none") != "none":
        raise ins.error(
            f"RUN --network={ins.flags['network']} is not supported: builds have no network"
        )


def check_add_source(ins: Instruction, source: str) -> None:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source) or source.startswith("git@"):
        raise ins.error(
            f"ADD {source}: remote sources are not supported (no network in builds); "
            "download the file into the build context and COPY it"
        )


def pairs(ins: Instruction, escape: str) -> list[tuple[str, str]]:
    """``ENV``/``LABEL`` name=value pairs, unprocessed (quotes still there);
    the legacy ``ENV NAME value with spaces`` form gives one pair."""
    args = ins.args.strip()
    words = split_words(args, escape)
    if not words:
        raise ins.error(f"{ins.keyword} needs at least one name=value")
    if "=" not in words[0]:
        name, _, value = args.partition(" ")
        name = name.strip()
        if not value.strip():
            raise ins.error(f"{ins.keyword} {name} needs a value (or use {name}=value)")
        return [(name, value.strip())]
    out = []
    for word in words:
        name, eq, value = word.partition("=")
        if not eq or not name:
            raise ins.error(f"syntax error: cannot find '=' in {word!r}; use the form name=value")
        out.append((name, value))
    return out


def parse_dockerfile(text: str, *, file: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile's text; :class:`InvalidDockerfile` names file:line on error."""
    lines = text.splitlines()
    directives, start = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise InvalidDockerfile(
            f"{file}:1: invalid escape character {escape!r}: use \\ or `", details={"line": 1}
        )
    instructions: list[Instruction] = []
    for line, joined in _logical_lines(lines, start, escape):
        keyword, _, rest = joined.strip().partition(" ")
        word = keyword
        if "\t" in keyword:
            word, _, more = keyword.partition("\t")
            rest = more + " " + rest
        kw = word.upper()
        where = f"{file}:{line}"
        if kw in _UNSUPPORTED:
            raise InvalidDockerfile(
                f"{where}: {kw} is not supported: {_UNSUPPORTED[kw]}",
                details={"line": line, "instruction": kw},
            )
        if kw not in SUPPORTED:
            raise InvalidDockerfile(
                f"{where}: unknown instruction {word!r}", details={"line": line, "instruction": kw}
            )
        flags, args = _split_flags(kw, rest, file, line)
        ins = Instruction(
            keyword=kw,
            line=line,
            original=joined.strip(),
            flags=flags,
            args=args.strip(),
            json_args=_json_form(args),
            file=file,
        )
        _check(ins, escape)
        instructions.append(ins)
    return _stages(instructions, file, escape, directives)


def _stages(
    instructions: list[Instruction], file: str, escape: str, directives: Mapping[str, str]
) -> Dockerfile:
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    from_: Instruction | None = None
    name: str | None = None

    def close() -> None:
        if from_ is not None and current is not None:
            stages.append(Stage(len(stages), name, from_, tuple(current)))

    seen_names: set[str] = set()
    for ins in instructions:
        if ins.keyword == "FROM":
            close()
            words = ins.args.split()
            if len(words) == 3 and words[1].lower() == "as":
                name = words[2].lower()
                if not _STAGE_NAME_RE.match(name):
                    raise ins.error(f"invalid stage name {words[2]!r}")
                if name in seen_names:
                    raise ins.error(f"duplicate stage name {words[2]!r}")
                seen_names.add(name)
            elif len(words) == 1:
                name = None
            else:
                raise ins.error("FROM takes an image and optionally AS name")
            from_, current = ins, []
        elif current is None:
            if ins.keyword != "ARG":
                raise ins.error(f"{ins.keyword} before the first FROM (only ARG may come first)")
            global_args.append(ins)
        else:
            current.append(ins)
    close()
    if not stages:
        raise InvalidDockerfile(f"{file}: no FROM instruction", details={"file": file})
    return Dockerfile(
        file=file,
        escape=escape,
        directives=dict(directives),
        global_args=tuple(global_args),
        stages=tuple(stages),
        instructions=tuple(instructions),
    )
