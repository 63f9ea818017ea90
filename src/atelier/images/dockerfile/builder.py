"""Build a template from a Dockerfile: RUN in gVisor sandboxes, every step cached.

For each stage the target needs (stages are built on demand, so unused ones
are skipped): FROM gives a base rootfs (a stage, an Atelier template, an OCI
image pulled into ``oci-<ref>``, or ``scratch``) and an image config; each
instruction then either only changes the config (ENV, USER, CMD, ...) or
adds a filesystem diff (RUN, COPY, ADD, WORKDIR). A step's input is a
read-only overlay of the diffs so far above the base; RUN runs in a gVisor
sandbox over it (``runstep``), COPY/ADD/WORKDIR write on the host
(``fscopy``). Every step's result is cached under its key (``cache``).

The final stage's merged view is copied (``cp -a``) into
``templates/.<name>.build-<random>/rootfs``, ``manifest.json`` is written and
the directory is renamed into place. Every mount, sandbox and temporary
directory is removed on success, failure and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...config import Settings
from ...errors import (
    AtelierError,
    BuildFailed,
    Conflict,
    InvalidRequest,
    RuntimeFailure,
    RuntimeUnavailable,
    TemplateNotFound,
)
from ...runtimes.gvisor import GVisorRuntime
from ..debootstrap import directory_size
from ..oci import (
    ImageConfig,
    now_iso,
    publish_build,
    pull_template,
    sweep_builds,
    write_json_atomic,
)
from ..registry_config import parse_reference
from ..store import (
    MANIFEST_NAME,
    ROOTFS_NAME,
    TemplateInfo,
    TemplateStore,
    read_manifest,
    safe_rmtree,
    template_lock,
    validate_name,
)
from . import overlay
from .cache import BuildCache, CacheEntry, step_key
from .context import BuildContext, ContextError, Source, collect_sources, hash_sources
from .fscopy import (
    CopyError,
    Owner,
    apply_copy,
    extract_archive,
    is_archive,
    make_workdir,
    parse_chmod,
    resolve_owner,
)
from .parser import Dockerfile, Instruction, Stage, check_add_source, pairs, read_dockerfile
from .runstep import run_in_sandbox
from .state import HOST_ARCH, ImageState
from .substitution import SubstitutionError, expand_word, expand_words, split_words

__all__ = ["BUILDER_VERSION", "build_dockerfile", "oci_template_name"]

BUILDER_VERSION = 1
NO_NETWORK_HINT = (
    "builds have no network (RUN steps run with --network=none): put what the "
    "step downloads into the build context and COPY it, or use a base image that has it"
)
_CONFIG_ONLY = frozenset(
    {"ENV", "ARG", "USER", "CMD", "ENTRYPOINT", "EXPOSE", "LABEL", "SHELL", "STOPSIGNAL"}
)
LogCallback = Callable[[str], None]


def oci_template_name(ref: str) -> str:
    """The template name an OCI reference is pulled into: ``oci-<ref>``, sanitized."""
    text = re.sub(r"[^a-z0-9_.-]+", "-", ref.lower()).strip("-.")
    name = f"oci-{text}"
    if len(name) > 63:
        digest = hashlib.sha256(ref.encode()).hexdigest()[:10]
        name = f"{name[:52].rstrip('-.')}-{digest}"
    return name


def _config_from_manifest(manifest: Mapping[str, Any]) -> ImageState:
    image = manifest.get("image")
    if not isinstance(image, dict):
        return ImageState()

    def strings(key: str) -> tuple[str, ...] | None:
        value = image.get(key)
        return tuple(str(v) for v in value) if isinstance(value, list) else None

    def text(key: str) -> str | None:
        value = image.get(key)
        return value if isinstance(value, str) and value else None

    labels = image.get("labels")
    state = ImageState.from_config(
        ImageConfig(
            env=strings("env") or (),
            user=text("user"),
            working_dir=text("working_dir"),
            entrypoint=strings("entrypoint"),
            cmd=strings("cmd"),
            exposed_ports=strings("exposed_ports") or (),
            labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
            stop_signal=text("stop_signal"),
        )
    )
    shell = strings("shell")
    return replace(state, shell=shell) if shell else state


@dataclass(frozen=True, slots=True)
class _Base:
    rootfs: Path
    state: ImageState
    identity: str  # what the FROM resolved to, for the cache key


@dataclass(frozen=True, slots=True)
class _StageResult:
    base: Path
    layers: tuple[Path, ...]  # diffs, bottom first
    state: ImageState
    key: str


@dataclass
class _StageCtx:
    stage: Stage
    base: Path
    layers: list[Path]
    state: ImageState
    key: str
    args: dict[str, str]  # ARGs in scope (declared in this stage)

    def subst_env(self) -> dict[str, str]:
        env = dict(self.args)
        env.update(self.state.env_map)  # ENV wins over ARG
        return env


def _default_args() -> dict[str, str]:
    platform = f"linux/{HOST_ARCH}"
    return {
        "TARGETPLATFORM": platform,
        "TARGETOS": "linux",
        "TARGETARCH": HOST_ARCH,
        "TARGETVARIANT": "",
        "BUILDPLATFORM": platform,
        "BUILDOS": "linux",
        "BUILDARCH": HOST_ARCH,
        "BUILDVARIANT": "",
    }


class _Build:
    def __init__(
        self,
        settings: Settings,
        name: str,
        dockerfile: Dockerfile,
        context: BuildContext,
        build_args: Mapping[str, str],
        no_cache: bool,
        on_log: LogCallback | None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.df = dockerfile
        self.context = context
        self.build_args = dict(build_args)
        self.used_args: set[str] = set()
        self.no_cache = no_cache
        self.on_log = on_log
        builds = Path(os.path.abspath(settings.data_dir)) / "builds"
        self.work = builds / f"work-{uuid.uuid4().hex[:12]}"
        self.runtime = GVisorRuntime(settings, state_dir=builds)
        self.cache = BuildCache(settings)
        self.results: dict[int, _StageResult] = {}
        self.building: set[int] = set()
        self.steps: list[dict[str, Any]] = []
        self.sandboxes: list[str] = []
        self.counter = 0
        self.global_args = self._global_args()
        self.target: str | None = None
        self.total_steps = 0  # FROMs and instructions of the stages up to the target

    def tag(self, number: int) -> str:
        """``step N/M``: what a progress display parses (M counts every stage up to
        the target; stages the target does not need are skipped, so N may stop short)."""
        return f"step {number}/{max(self.total_steps, number)}"

    # -- logging -------------------------------------------------------------
    def log(self, text: str) -> None:
        if self.on_log is not None:
            self.on_log(text)

    def _next_dir(self, prefix: str) -> Path:
        self.counter += 1
        return self.work / f"{prefix}-{self.counter}"

    # -- args ----------------------------------------------------------------
    def _global_args(self) -> dict[str, str]:
        values = _default_args()
        for ins in self.df.global_args:
            for word in _arg_words(ins, self.df.escape):
                name, eq, default = word.partition("=")
                if name in self.build_args:
                    values[name] = self.build_args[name]
                    self.used_args.add(name)
                elif eq:
                    values[name] = self._expand(ins, default, values)
                else:
                    values.pop(name, None)
        return values

    def _expand(self, ins: Instruction, text: str, env: Mapping[str, str]) -> str:
        try:
            return expand_word(text, env, self.df.escape)
        except SubstitutionError as exc:
            raise ins.error(str(exc)) from None

    def _expand_words(self, ins: Instruction, text: str, env: Mapping[str, str]) -> list[str]:
        try:
            return expand_words(text, env, self.df.escape)
        except SubstitutionError as exc:
            raise ins.error(str(exc)) from None

    # -- bases ---------------------------------------------------------------------
    async def _resolve_image(self, ins: Instruction, image: str) -> _Base:
        if image.lower() == "scratch":
            root = self.work / "scratch"
            root.mkdir(parents=True, exist_ok=True)
            os.chmod(root, 0o755)
            return _Base(root, ImageState(), "scratch")
        store = TemplateStore(self.settings)
        with contextlib.suppress(InvalidRequest, TemplateNotFound):
            validate_name(image)
            if store.get(image).ready:
                return self._template_base(image)
        try:
            ref = parse_reference(image)
        except InvalidRequest:
            raise ins.error(
                f"{image!r} is neither a stage, an Atelier template nor an image reference"
            ) from None
        template = oci_template_name(str(ref))
        self.log(f"pulling {ref} into template {template!r}")
        try:
            await asyncio.to_thread(pull_template, self.settings, template, str(ref))
        except AtelierError as exc:
            raise type(exc)(
                f"{ins.where()}: FROM {image}: {exc.message}", details=exc.details
            ) from exc
        return self._template_base(template)

    def _template_base(self, name: str) -> _Base:
        # the current version's own paths: a rebuild of ``name`` during this
        # build does not change what this build sees
        store = TemplateStore(self.settings)
        info = store.checkout(name, lease=0)
        raw = store.manifest_path(name, info.version).read_bytes()
        manifest = json.loads(raw)
        self.log(f"using template {name!r} version {info.version}")
        return _Base(
            info.rootfs,
            _config_from_manifest(manifest),
            f"template:{name}:{hashlib.sha256(raw).hexdigest()}",
        )

    async def _stage_ref(self, ins: Instruction, ref: str, current: int) -> int | None:
        """The index of the stage ``ref`` names (built first), or None."""
        stage = self.df.stage(ref)
        if stage is None:
            return None
        if stage.index >= current:
            raise ins.error(f"stage {ref!r} is not defined before this one")
        await self.stage(stage.index)
        return stage.index

    # -- stages ------------------------------------------------------------------
    async def stage(self, index: int) -> _StageResult:
        done = self.results.get(index)
        if done is not None:
            return done
        if index in self.building:
            raise self.df.stages[index].from_.error("stages depend on each other in a cycle")
        self.building.add(index)
        stage = self.df.stages[index]
        ins = stage.from_
        words = self._expand_words(ins, ins.args, self.global_args)
        image = words[0] if words else ""
        if not image:
            raise ins.error("FROM needs an image")
        platform = ins.flags.get("platform")
        if platform is not None:
            wanted = self._expand(ins, platform, self.global_args)
            if wanted not in (f"linux/{HOST_ARCH}", "linux"):
                raise ins.error(f"--platform={wanted}: only linux/{HOST_ARCH} can be built here")
        self.log(f"{self.tag(len(self.steps) + 1)} [{stage.label}] FROM {image}")
        ref_index = await self._stage_ref(ins, image, index)
        if ref_index is not None:
            parent = self.results[ref_index]
            ctx = _StageCtx(
                stage,
                parent.base,
                list(parent.layers),
                replace(parent.state, cmd_set=False),
                step_key(parent.key, "FROM stage"),
                {},
            )
        else:
            base = await self._resolve_image(ins, image)
            ctx = _StageCtx(
                stage, base.rootfs, [], base.state, step_key(None, f"FROM {base.identity}"), {}
            )
        self._record(ctx, ins, ctx.key, True)
        for step in stage.instructions:
            await self._step(ctx, step)
        result = _StageResult(ctx.base, tuple(ctx.layers), ctx.state, ctx.key)
        self.results[index] = result
        return result

    def _record(self, ctx: _StageCtx, ins: Instruction, key: str, cached: bool) -> None:
        self.steps.append(
            {
                "stage": ctx.stage.label,
                "instruction": ins.original,
                "line": ins.line,
                "key": key,
                "cached": cached,
            }
        )

    # -- steps ----------------------------------------------------------------------
    async def _step(self, ctx: _StageCtx, ins: Instruction) -> None:
        kw = ins.keyword
        env = ctx.subst_env()
        number = len(self.steps) + 1
        if kw == "ARG":
            self._arg(ctx, ins)
            key = step_key(ctx.key, "ARG " + " ".join(sorted(ctx.args)))
            await self._config_step(ctx, ins, key, ctx.state)
            return
        if kw in _CONFIG_ONLY or kw in ("VOLUME", "MAINTAINER"):
            state, normalized = self._config(ctx, ins, env)
            await self._config_step(ctx, ins, step_key(ctx.key, normalized), state)
            return
        if kw == "WORKDIR":
            path = self._expand(ins, ins.args, env)
            path = posixpath.normpath(posixpath.join(ctx.state.working_dir or "/", path))
            state = replace(ctx.state, working_dir=path)
            key = step_key(ctx.key, f"WORKDIR {path}")

            async def workdir(view: Path, diff: Path) -> None:
                await asyncio.to_thread(make_workdir, view, diff, path, ctx.state.user)

            await self._fs_step(ctx, ins, key, state, workdir, number)
            return
        if kw == "RUN":
            await self._run(ctx, ins, number)
            return
        if kw in ("COPY", "ADD"):
            await self._copy(ctx, ins, env, number)
            return
        raise ins.error(f"{kw} is not supported")  # the parser lets nothing else through

    def _arg(self, ctx: _StageCtx, ins: Instruction) -> None:
        for word in _arg_words(ins, self.df.escape):
            name, eq, default = word.partition("=")
            if name in self.build_args:
                ctx.args[name] = self.build_args[name]
                self.used_args.add(name)
            elif eq:
                ctx.args[name] = self._expand(ins, default, ctx.subst_env())
            elif name in self.global_args:
                ctx.args[name] = self.global_args[name]
            else:
                ctx.args.pop(name, None)

    def _config(
        self, ctx: _StageCtx, ins: Instruction, env: Mapping[str, str]
    ) -> tuple[ImageState, str]:
        kw, state = ins.keyword, ctx.state
        if kw in ("ENV", "LABEL"):
            values = {
                self._expand(ins, k, env): self._expand(ins, v, env)
                for k, v in pairs(ins, self.df.escape)
            }
            new = state.with_env(values) if kw == "ENV" else state.with_labels(values)
            return new, f"{kw} {json.dumps(sorted(values.items()))}"
        if kw == "MAINTAINER":
            value = self._expand(ins, ins.args, env)
            return state.with_labels({"maintainer": value}), f"MAINTAINER {value}"
        if kw == "USER":
            user = self._expand(ins, ins.args, env)
            return replace(state, user=user), f"USER {user}"
        if kw == "STOPSIGNAL":
            sig = self._expand(ins, ins.args, env)
            return replace(state, stop_signal=sig), f"STOPSIGNAL {sig}"
        if kw == "SHELL":
            shell = ins.json_args or ()
            return replace(state, shell=shell), f"SHELL {json.dumps(shell)}"
        if kw in ("CMD", "ENTRYPOINT"):
            argv = ins.json_args if ins.json_args is not None else (*state.shell, ins.args)
            if kw == "CMD":
                new = replace(state, cmd=argv, cmd_set=True)
            else:
                new = replace(state, entrypoint=argv, cmd=state.cmd if state.cmd_set else None)
            return new, f"{kw} {json.dumps(argv)}"
        if kw == "EXPOSE":
            ports = set(state.exposed_ports)
            for word in self._expand_words(ins, ins.args, env):
                ports.update(_ports(ins, word))
            new = replace(state, exposed_ports=tuple(sorted(ports)))
            return new, f"EXPOSE {' '.join(new.exposed_ports)}"
        if kw == "VOLUME":
            self.log(f"warning: {ins.where()}: VOLUME is ignored (a sandbox has one disk)")
            return state, "VOLUME"
        raise ins.error(f"{kw} is not a config instruction")

    async def _config_step(
        self, ctx: _StageCtx, ins: Instruction, key: str, state: ImageState
    ) -> None:
        entry = None if self.no_cache else self.cache.lookup(key)
        if entry is None:
            tmp = self.cache.new_tmp()
            self.cache.commit(tmp, key, self._entry_config(ctx, ins, state), replace=True)
        ctx.state, ctx.key = state, key
        self._record(ctx, ins, key, entry is not None)

    def _entry_config(self, ctx: _StageCtx, ins: Instruction, state: ImageState) -> dict[str, Any]:
        return {
            "instruction": ins.original,
            "line": ins.line,
            "parent": ctx.key,
            "image": state.to_json(),
            "created_at": now_iso(),
        }

    async def _fs_step(
        self,
        ctx: _StageCtx,
        ins: Instruction,
        key: str,
        state: ImageState,
        work: Callable[[Path, Path], Awaitable[None]],
        number: int,
    ) -> None:
        """A step that may change files: cached, or ``await work(view, diff)``."""
        async with self.cache.step_lock_async(key):
            entry: CacheEntry | None = None if self.no_cache else self.cache.lookup(key)
            cached = entry is not None
            if entry is None:
                self.log(f"{self.tag(number)} [{ctx.stage.label}] {ins.original}")
                tmp = self.cache.new_tmp()
                view_dir = self._next_dir("view")
                try:
                    try:
                        view = await overlay.mount_view(
                            ctx.layers, ctx.base, view_dir, self.cache.root
                        )
                        await work(view, tmp / "diff")
                    finally:
                        await overlay.unmount(view_dir)
                        with contextlib.suppress(FileNotFoundError):
                            view_dir.rmdir()
                except BaseException:
                    safe_rmtree(tmp)
                    raise
                entry = self.cache.commit(
                    tmp, key, self._entry_config(ctx, ins, state), replace=True
                )
            else:
                self.log(f"{self.tag(number)} [{ctx.stage.label}] CACHED {ins.original}")
        if entry.diff is not None:
            ctx.layers.append(entry.diff)
        ctx.state, ctx.key = state, key
        self._record(ctx, ins, key, cached)

    # -- RUN ----------------------------------------------------------------------------
    async def _run(self, ctx: _StageCtx, ins: Instruction, number: int) -> None:
        state = ctx.state
        argv = list(ins.json_args) if ins.json_args is not None else [*state.shell, ins.args]
        env = dict(ctx.args)
        env.update(state.env_map)
        cwd = state.working_dir or "/"
        user = (state.user or "root").partition(":")[0] or "root"
        normalized = json.dumps({"run": argv, "cwd": cwd, "user": state.user or "root"})
        key = step_key(ctx.key, f"RUN {normalized}", args=ctx.args)
        for name in ctx.args:
            if name in self.build_args:
                self.used_args.add(name)

        async def run(view: Path, diff: Path) -> None:
            scratch = self._next_dir("mnt")
            outcome = await run_in_sandbox(
                self.runtime,
                view,
                argv,
                env=env,
                cwd=cwd,
                user=user,
                diff=diff,
                scratch=scratch,
                on_log=self.on_log,
                on_sandbox=self.sandboxes.append,
                resources=self._resources(),
            )
            if outcome.exit_code != 0 or outcome.signal is not None:
                how = (
                    f"signal {outcome.signal}"
                    if outcome.signal
                    else f"exit code {outcome.exit_code}"
                )
                tail = "\n".join(outcome.tail[-20:]) or "(no output)"
                raise BuildFailed(
                    f"step {number} ({ins.where()}) failed with {how}: {ins.original}\n"
                    f"{tail}\nhint: {NO_NETWORK_HINT}",
                    details={
                        "step": number,
                        "line": ins.line,
                        "file": ins.file,
                        "instruction": ins.original,
                        "exit_code": outcome.exit_code,
                        "signal": outcome.signal,
                        "output": list(outcome.tail),
                        "hint": NO_NETWORK_HINT,
                    },
                )
            self.log(f"{self.tag(number)} done in {outcome.seconds:.1f}s")

        await self._fs_step(ctx, ins, key, state, run, number)

    def _resources(self) -> dict[str, int]:
        s = self.settings
        return {
            "vcpus": max(1, min(os.cpu_count() or 1, s.max_vcpus, 4)),
            "memory_mib": min(2048, s.max_memory_mib),
            "disk_mib": min(8192, s.max_disk_mib),
        }

    # -- COPY / ADD ----------------------------------------------------------------------
    async def _copy(
        self, ctx: _StageCtx, ins: Instruction, env: Mapping[str, str], number: int
    ) -> None:
        if ins.json_args is not None:
            words = [self._expand(ins, w, env) for w in ins.json_args]
        else:
            words = self._expand_words(ins, ins.args, env)
        if len(words) < 2:
            raise ins.error(f"{ins.keyword} needs at least one source and a destination")
        patterns, dest = words[:-1], words[-1]
        if ins.keyword == "ADD":
            for pattern in patterns:
                check_add_source(ins, pattern)
        if not dest.startswith("/"):
            trailing = dest.endswith("/") or dest in (".", "./")
            dest = posixpath.join(ctx.state.working_dir or "/", dest)
            dest = posixpath.normpath(dest) + ("/" if trailing else "")
        flags = {k: self._expand(ins, v, env) for k, v in ins.flags.items()}
        chmod = None
        if "chmod" in flags:
            try:
                chmod = parse_chmod(flags["chmod"])
            except CopyError as exc:
                raise ins.error(str(exc)) from None
        from_root: Path | None = None
        from_view: Path | None = None
        content: str
        if "from" in flags:
            ref = flags["from"]
            index = await self._stage_ref(ins, ref, ctx.stage.index)
            if index is not None:
                done = self.results[index]
                content = f"stage:{done.key}"
                from_view = self._next_dir("from")
                from_root = await overlay.mount_view(
                    list(done.layers), done.base, from_view, self.cache.root
                )
            else:
                base = await self._resolve_image(ins, ref)
                content, from_root = base.identity, base.rootfs
        try:
            if from_root is not None:
                sources = self._sources(ins, from_root, patterns, ignore=False)
            else:
                sources = self._sources(ins, self.context.root, patterns, ignore=True)
                content = await asyncio.to_thread(hash_sources, sources)
            normalized = json.dumps(
                {
                    "op": ins.keyword,
                    "sources": patterns,
                    "dest": dest,
                    "chown": flags.get("chown"),
                    "chmod": flags.get("chmod"),
                    "from": flags.get("from"),
                }
            )
            key = step_key(ctx.key, normalized, content=content)
            keep_owner = from_root is not None
            extract = ins.keyword == "ADD" and from_root is None

            async def copy(view: Path, diff: Path) -> None:
                await asyncio.to_thread(
                    self._do_copy, ins, view, diff, sources, dest, flags, chmod, keep_owner, extract
                )

            await self._fs_step(ctx, ins, key, ctx.state, copy, number)
        finally:
            if from_view is not None:
                await overlay.unmount(from_view)

    def _sources(
        self, ins: Instruction, root: Path, patterns: list[str], *, ignore: bool
    ) -> list[Source]:
        found: list[Source] = []
        for pattern in patterns:
            try:
                found.extend(
                    collect_sources(
                        root,
                        pattern,
                        ignore=self.context.ignore if ignore else None,
                        absolute_links=not ignore,
                    )
                )
            except ContextError as exc:
                where = "the build context" if ignore else "the source stage"
                raise ins.error(f"{ins.keyword} {pattern}: {exc} (in {where})") from None
        return found

    def _do_copy(
        self,
        ins: Instruction,
        view: Path,
        diff: Path,
        sources: list[Source],
        dest: str,
        flags: Mapping[str, str],
        chmod: int | None,
        keep_owner: bool,
        extract: bool,
    ) -> None:
        try:
            owner = resolve_owner(view, flags["chown"]) if "chown" in flags else None
            if owner is None and not keep_owner:
                owner = Owner(0, 0)
            plain: list[Source] = []
            for source in sources:
                if extract and not source.is_dir and is_archive(source.entries[0].path):
                    staging = self._next_dir("archive")
                    staging.mkdir(parents=True)
                    try:
                        tree = extract_archive(source.entries[0].path, staging)
                        apply_copy(  # an archive's own owners are kept unless --chown
                            view,
                            diff,
                            [tree],
                            dest if dest.endswith("/") else dest + "/",
                            owner=owner if "chown" in flags else None,
                            chmod=chmod,
                        )
                    finally:
                        shutil.rmtree(staging, ignore_errors=True)
                else:
                    plain.append(source)
            if plain:
                apply_copy(view, diff, plain, dest, owner=owner, chmod=chmod)
        except (CopyError, ContextError) as exc:
            raise BuildFailed(
                f"{ins.where()}: {ins.keyword} failed: {exc}",
                details={"line": ins.line, "instruction": ins.original},
            ) from None

    # -- the end ---------------------------------------------------------------------------
    def warn_unused_args(self) -> None:
        unused = sorted(set(self.build_args) - self.used_args)
        if unused:
            self.log(f"warning: build args not used by any ARG: {', '.join(unused)}")

    async def install(self, result: _StageResult, dockerfile_path: Path) -> TemplateInfo:
        view_dir = self.work / "final"
        view = await overlay.mount_view(list(result.layers), result.base, view_dir, self.cache.root)
        try:
            self.log(f"writing template {self.name!r}")
            return await asyncio.to_thread(self._install, view, result, dockerfile_path)
        finally:
            await overlay.unmount(view_dir)

    def _install(self, view: Path, result: _StageResult, dockerfile_path: Path) -> TemplateInfo:
        settings, name = self.settings, self.name
        templates = settings.templates_dir
        with template_lock(templates, name):
            sweep_builds(settings, name)
            existing = read_manifest(templates / name)
            if existing is not None and existing.get("builder") != "dockerfile":
                raise Conflict(
                    f"template {name!r} exists and was not built from a Dockerfile "
                    f"(builder {existing.get('builder')}); remove it first or pick another name",
                    details={"template": name},
                )
            if (
                existing is not None
                and existing.get("key") == result.key
                and (templates / name / ROOTFS_NAME).is_dir()
            ):
                # the same final step as the installed template: same files;
                # record this build's steps (all cached) and keep the rootfs
                # (no new version: the current one has exactly these files)
                store = TemplateStore(settings)
                current = store.get(name)
                self.log(f"template {name!r} is up to date (version {current.version})")
                updated = {**existing, "steps": self.steps, "built_at": now_iso()}
                write_json_atomic(store.manifest_path(name, current.version), updated)
                return store.get(name)
            work = templates / f".{name}.build-{uuid.uuid4().hex[:8]}"
            work.mkdir(mode=0o700, parents=True)
            try:
                rootfs = work / ROOTFS_NAME
                rootfs.mkdir()
                res = subprocess.run(
                    ["cp", "-a", "--no-preserve=context", f"{view}/.", f"{rootfs}/"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if res.returncode != 0:
                    raise RuntimeFailure(f"cannot copy the built rootfs: {res.stderr[-800:]}")
                manifest = {
                    "name": name,
                    "runtime": "gvisor",
                    "created_at": now_iso(),
                    "builder": "dockerfile",
                    "builder_version": BUILDER_VERSION,
                    "dockerfile": str(dockerfile_path),
                    "context": str(self.context.root),
                    "target": self.target,
                    "image": result.state.to_json(),
                    "steps": self.steps,
                    "key": result.key,
                    "size_bytes": directory_size(rootfs),
                }
                write_json_atomic(work / MANIFEST_NAME, manifest)
                version = publish_build(work, templates / name, name)
            except BaseException:
                safe_rmtree(work)
                raise
        self.log(f"template {name!r} version {version} ready")
        return TemplateStore(settings).get(name)

    async def cleanup(self) -> None:
        for sid in self.sandboxes:
            with contextlib.suppress(Exception):
                await self.runtime.destroy(sid)
        with contextlib.suppress(Exception):
            await overlay.unmount(self.work)
        if self.work.exists() and not overlay.has_mounts(self.work):
            await asyncio.to_thread(shutil.rmtree, self.work, True)


def _arg_words(ins: Instruction, escape: str) -> list[str]:
    out = []
    for word in split_words(ins.args, escape):
        name, eq, value = word.partition("=")
        out.append(f"{name}={value}" if eq else name)
    return out


def _ports(ins: Instruction, word: str) -> list[str]:
    port, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ins.error(f"EXPOSE {word}: unknown protocol {proto!r}")
    low, dash, high = port.partition("-")
    if not low.isdigit() or (dash and not high.isdigit()):
        raise ins.error(f"EXPOSE {word}: not a port number")
    first, last = int(low), int(high) if dash else int(low)
    if not 0 < first <= last <= 65535:
        raise ins.error(f"EXPOSE {word}: port out of range")
    return [f"{p}/{proto}" for p in range(first, last + 1)]


async def build_dockerfile(
    settings: Settings,
    name: str,
    *,
    context: Path,
    dockerfile: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    no_cache: bool = False,
    on_log: LogCallback | None = None,
) -> TemplateInfo:
    """Build template ``name`` from a Dockerfile (default ``<context>/Dockerfile``).

    Errors: InvalidRequest (bad name, context or target), InvalidDockerfile
    (the file, naming file:line), BuildFailed (a step failed; RUN output in
    ``details["output"]``), Conflict (``name`` is a template of another builder),
    RuntimeUnavailable (no gVisor here), RuntimeFailure.
    """
    validate_name(name)
    root = Path(os.path.abspath(context))
    if not root.is_dir():
        raise InvalidRequest(
            f"build context {root} is not a directory", details={"context": str(root)}
        )
    path = Path(os.path.abspath(dockerfile)) if dockerfile is not None else root / "Dockerfile"
    try:
        display = str(path.relative_to(root))
    except ValueError:
        display = str(path)
    df = read_dockerfile(path, display=display)
    existing = read_manifest(settings.templates_dir / name)
    if existing is not None and existing.get("builder") != "dockerfile":
        raise Conflict(
            f"template {name!r} exists and was not built from a Dockerfile "
            f"(builder {existing.get('builder')}); remove it first or pick another name",
            details={"template": name},
        )
    try:
        ctx = BuildContext.load(root, dockerfile=path)
    except ContextError as exc:
        raise InvalidRequest(str(exc)) from None
    if target is not None:
        stage = df.stage(target)
        if stage is None:
            known = ", ".join(s.label for s in df.stages)
            raise InvalidRequest(
                f"no stage {target!r} in {display} (stages: {known})", details={"target": target}
            )
        index = stage.index
    else:
        index = len(df.stages) - 1
    build = _Build(settings, name, df, ctx, build_args or {}, no_cache, on_log)
    build.target = df.stages[index].label
    build.total_steps = sum(1 + len(s.instructions) for s in df.stages[: index + 1])
    runtime = build.runtime
    status = runtime.availability()
    if not status.available:
        raise RuntimeUnavailable(f"Dockerfile builds need gVisor: {status.reason}")
    build.work.mkdir(parents=True, mode=0o700)
    try:
        with build.cache.in_use():
            result = await build.stage(index)
            build.warn_unused_args()
            return await build.install(result, path)
    finally:
        await build.cleanup()
