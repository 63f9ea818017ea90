"""Cache keys, the cache store, and config-only steps (ENV/ARG scoping) without
sandboxes: ``FROM scratch`` stages with no RUN need neither root nor runsc."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.errors import InvalidDockerfile
from atelier.images.dockerfile import builder as builder_mod
from atelier.images.dockerfile.builder import _Build, oci_template_name
from atelier.images.dockerfile.cache import BuildCache, step_key
from atelier.images.dockerfile.context import (
    BuildContext,
    IgnoreMatcher,
    collect_sources,
    hash_sources,
)
from atelier.images.dockerfile.parser import parse_dockerfile


def _hash(ctx: Path, pattern: str = ".", ignore: list[str] | None = None) -> str:
    matcher = IgnoreMatcher(ignore or [])
    return hash_sources(collect_sources(ctx, pattern, ignore=matcher, absolute_links=False))


def test_key_depends_on_parent_instruction_args_and_content() -> None:
    base = step_key("p", "RUN x", args={"A": "1"}, content="c")
    assert base == step_key("p", "RUN x", args={"A": "1"}, content="c")
    assert len(base) == 64
    assert base != step_key("q", "RUN x", args={"A": "1"}, content="c")
    assert base != step_key("p", "RUN y", args={"A": "1"}, content="c")
    assert base != step_key("p", "RUN x", args={"A": "2"}, content="c")
    assert base != step_key("p", "RUN x", args={"A": "1"}, content="d")
    assert step_key(None, "a", args={"X": "1", "Y": "2"}) == step_key(
        None, "a", args={"Y": "2", "X": "1"}
    )


def test_content_hash_changes_with_content_mode_name_and_link(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("one")
    (tmp_path / "l").symlink_to("f")
    first = _hash(tmp_path)
    (tmp_path / "f").write_text("two")
    second = _hash(tmp_path)
    assert second != first
    os.chmod(tmp_path / "f", 0o700)
    third = _hash(tmp_path)
    assert third != second
    (tmp_path / "l").unlink()
    (tmp_path / "l").symlink_to("elsewhere")
    fourth = _hash(tmp_path)
    assert fourth != third
    (tmp_path / "f").rename(tmp_path / "g")
    assert _hash(tmp_path) != fourth


def test_content_hash_ignores_times_and_ignored_files(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("one")
    (tmp_path / "notes.log").write_text("a")
    before = _hash(tmp_path, ignore=["*.log"])
    os.utime(tmp_path / "f", (1, 1))
    (tmp_path / "notes.log").write_text("changed")
    (tmp_path / "new.log").write_text("new")
    assert _hash(tmp_path, ignore=["*.log"]) == before
    assert _hash(tmp_path) != _hash(tmp_path, ignore=["*.log"])


# -- the store ------------------------------------------------------------------------


def test_store_is_atomic_and_first_writer_wins(tmp_path: Path) -> None:
    cache = BuildCache(Settings(data_dir=tmp_path))
    key = step_key(None, "x")
    entry = cache.store(key, {"n": 1}, lambda d: (d / "file").write_text("a"))
    assert entry.diff is not None and (entry.diff / "file").read_text() == "a"
    again = cache.store(key, {"n": 2}, lambda d: (d / "file").write_text("b"))
    assert again.config["n"] == 1
    assert cache.lookup(key) is not None
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".tmp-")]
    replaced = cache.store(key, {"n": 3}, None, replace=True)
    assert replaced.diff is None  # config-only
    assert [p for p in cache.root.iterdir() if p.name.startswith(".trash-")]


def test_failed_populate_leaves_nothing(tmp_path: Path) -> None:
    cache = BuildCache(Settings(data_dir=tmp_path))
    key = step_key(None, "y")

    def boom(diff: Path) -> None:
        (diff / "partial").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        cache.store(key, {}, boom)
    assert cache.lookup(key) is None
    assert [p.name for p in cache.root.iterdir() if not p.name.startswith(".lock")] == []


def test_prune_keeps_listed_and_recent(tmp_path: Path) -> None:
    cache = BuildCache(Settings(data_dir=tmp_path))
    keys = [step_key(None, str(i)) for i in range(3)]
    for key in keys:
        cache.store(key, {}, lambda d: (d / "f").write_text("x" * 5000))
    old = cache.root / keys[2]
    os.utime(old, (1, 1))
    result = cache.prune({keys[0]}, older_than=3600)
    assert (result.removed, result.kept) == (1, 2)
    assert sorted(cache.keys()) == sorted(keys[:2])
    assert cache.prune(set(), everything=True).removed == 2
    assert cache.keys() == []


# -- config steps through the builder (FROM scratch: no sandbox) ------------------------------


def _build(tmp_path: Path, text: str, build_args: dict[str, str] | None = None) -> _Build:
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    df = parse_dockerfile(text)
    b = _Build(
        Settings(data_dir=tmp_path / "data"),
        "t",
        df,
        BuildContext.load(ctx),
        build_args or {},
        False,
        None,
    )
    b.work.mkdir(parents=True)
    return b


def _run_stage(b: _Build, index: int = -1) -> builder_mod._StageResult:
    return asyncio.run(b.stage(index % len(b.df.stages)))


def test_env_arg_scoping_follows_docker(tmp_path: Path) -> None:
    b = _build(
        tmp_path,
        "ARG V=global\n"
        "ARG ONLY_GLOBAL=g\n"
        "FROM scratch\n"
        "ARG V\n"  # imports the global default
        "ARG LOCAL=${V}-local\n"
        "ENV A=$V B=${LOCAL} C=$ONLY_GLOBAL\n"
        "ENV V=from-env\n"
        "ENV D=$V E=${UNSET:-dflt} F=${A:+alt}\n"  # ENV wins over ARG
        "ENV G=1 H=$G\n"  # same instruction: the previous value (unset)
        'LABEL "com.example.k"="v w" other=$A\n'
        "USER $A\n"
        "WORKDIR /srv\n"
        "WORKDIR sub/../app\n"
        "EXPOSE 80 53/udp 8000-8001\n"
        "STOPSIGNAL SIGTERM\n"
        'ENTRYPOINT ["/bin/app"]\n'
        "CMD run --fast\n",
    )
    state = _run_stage(b).state
    env = state.env_map
    assert env["A"] == "global" and env["B"] == "global-local" and env["C"] == ""
    assert env["D"] == "from-env" and env["E"] == "dflt" and env["F"] == "alt"
    assert env["G"] == "1" and env["H"] == ""
    assert dict(state.labels) == {"com.example.k": "v w", "other": "global"}
    assert state.user == "global"
    assert state.working_dir == "/srv/app"
    assert state.exposed_ports == ("53/udp", "80/tcp", "8000/tcp", "8001/tcp")
    assert state.entrypoint == ("/bin/app",)
    assert state.cmd == ("/bin/sh", "-c", "run --fast")
    assert state.stop_signal == "SIGTERM"


def test_build_args_override_defaults_and_key_changes_only_from_use(tmp_path: Path) -> None:
    text = "FROM scratch\nENV A=1\nARG X=default\nENV B=$X\n"
    plain = _build(tmp_path / "a", text)
    _run_stage(plain)
    keyed = _build(tmp_path / "b", text, {"X": "given", "UNUSED": "1"})
    state = _run_stage(keyed).state
    assert state.env_map["B"] == "given"
    assert keyed.used_args == {"X"}
    # steps before the ARG's use keep their keys; the ENV using it changes
    assert [s["key"] for s in plain.steps[:3]] == [s["key"] for s in keyed.steps[:3]]
    assert plain.steps[3]["key"] != keyed.steps[3]["key"]


def test_entrypoint_resets_an_inherited_cmd_and_stages_inherit_env(tmp_path: Path) -> None:
    b = _build(
        tmp_path,
        'FROM scratch AS one\nENV K=v\nCMD ["a"]\nARG NOTKEPT=1\n'
        'FROM one\nENTRYPOINT ["e"]\nENV L=${NOTKEPT:-gone}\n',
    )
    state = _run_stage(b).state
    assert state.cmd is None and state.entrypoint == ("e",)
    assert state.env_map == {"K": "v", "L": "gone"}


def test_second_run_is_all_cached(tmp_path: Path) -> None:
    text = "FROM scratch\nENV A=1\nLABEL x=y\n"
    first = _build(tmp_path, text)
    _run_stage(first)
    assert [s["cached"] for s in first.steps] == [True, False, False]
    second = _build(tmp_path, text)
    _run_stage(second)
    assert [s["cached"] for s in second.steps] == [True, True, True]
    assert [s["key"] for s in first.steps] == [s["key"] for s in second.steps]


def test_substitution_error_names_the_line(tmp_path: Path) -> None:
    b = _build(tmp_path, "FROM scratch\n\nENV A=${NOPE:?required}\n")
    with pytest.raises(InvalidDockerfile, match=r"Dockerfile:3: NOPE: required"):
        _run_stage(b)


def test_unsupported_platform_and_unknown_stage(tmp_path: Path) -> None:
    b = _build(tmp_path, "FROM --platform=linux/s390x scratch\n")
    with pytest.raises(InvalidDockerfile, match="Dockerfile:1: --platform=linux/s390x"):
        _run_stage(b)
    c = _build(tmp_path, "FROM scratch\nCOPY --from=later /a /b\nFROM scratch AS later\n")
    with pytest.raises(InvalidDockerfile, match="Dockerfile:2"):
        _run_stage(c, 0)


def test_oci_template_names() -> None:
    assert oci_template_name("docker.io/library/alpine:3") == "oci-docker.io-library-alpine-3"
    long = oci_template_name("registry.example.com/" + "x" * 80 + ":1")
    assert len(long) <= 63 and long.startswith("oci-registry.example.com-")
