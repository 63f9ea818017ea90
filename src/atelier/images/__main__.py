"""``python -m atelier.images``: build, pull, import, list and remove templates.

python -m atelier.images build base [--force] [--data-dir DIR] [--include PKG,...]
python -m atelier.images build NAME --dockerfile PATH [--context DIR] [--build-arg K=V]...
                                    [--target STAGE] [--no-cache] [--data-dir DIR]
python -m atelier.images cache prune [--all] [--data-dir DIR]
python -m atelier.images pull NAME IMAGE_REF [--creds USER:TOKEN] [--force] [--data-dir DIR]
python -m atelier.images import NAME FILE.tar [--force] [--data-dir DIR]
python -m atelier.images ls [--data-dir DIR]
python -m atelier.images rm NAME [--data-dir DIR]     (refused while sandboxes use it)

Every build, pull or import makes a new version of the template; versions no
sandbox uses any more are deleted afterwards (the server's database says which
are in use).

``--creds`` may also come from ``$ATELIER_REGISTRY_CREDS`` (kept out of the
shell history and of ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..config import Settings
from ..errors import AtelierError, InvalidRequest, TemplateInUse
from .debootstrap import ProgressEvent, build_template
from .oci import import_archive, pull_template, remove_image_tag
from .store import TemplateInfo, TemplateStore, read_manifest

__all__ = ["main"]

_PHASE_LABELS = {
    "resolve": "Resolving",
    "prepare": "Preparing",
    "download": "Downloading",
    "extract": "Extracting",
    "unpack": "Unpacking",
    "configure": "Configuring",
    "finalize": "Finishing",
    "done": "Done",
}


def _settings(data_dir: Path | None) -> Settings:
    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


class _Bar:
    """One bar per phase: the phase's count against its total (a pulsing bar
    when debootstrap does not announce a total). Debootstrap unpacks and
    configures twice (required, then base packages): a phase keeps its bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.current: tuple[str, int] | None = None  # (phase, done)

    def __call__(self, event: ProgressEvent) -> None:
        if self.current is not None and self.current[0] != event.phase:
            phase, done = self.current  # show the phase we leave as complete
            self.progress.update(self.tasks[phase], total=max(done, 1), completed=max(done, 1))
        task = self.tasks.get(event.phase)
        if task is None:
            label = _PHASE_LABELS.get(event.phase, event.phase)
            task = self.tasks[event.phase] = self.progress.add_task(label, total=None, detail="")
        self.current = (event.phase, event.done)
        self.progress.update(
            task, completed=event.done, total=event.total, detail=event.message[:60]
        )


class _Lines:
    """For logs (no terminal): one line per phase change."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.phase: str | None = None
        self.started = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase == self.phase:
            return
        self.phase = event.phase
        elapsed = time.monotonic() - self.started
        label = _PHASE_LABELS.get(event.phase, event.phase)
        self.console.print(
            f"[{elapsed:5.1f}s] {label}: {event.message}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


Build = Callable[[Callable[[ProgressEvent], None] | None], TemplateInfo]


def _build(args: argparse.Namespace, console: Console) -> int:
    if args.dockerfile is not None:
        return _build_dockerfile(args, console)
    for flag, value in (
        ("--context", args.context),
        ("--build-arg", args.build_arg),
        ("--target", args.target),
        ("--no-cache", args.no_cache or None),
    ):
        if value is not None:
            raise InvalidRequest(f"{flag} needs --dockerfile")
    settings = _settings(args.data_dir)
    include = [p for p in (args.include or "").split(",") if p]

    def build(on_progress: Callable[[ProgressEvent], None] | None) -> TemplateInfo:
        return build_template(
            settings, args.name, force=args.force, packages=include, on_progress=on_progress
        )

    return _run_with_progress(args, console, build)


def _build_args(pairs: list[str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not key:
            raise InvalidRequest(f"--build-arg {pair!r}: use NAME=VALUE")
        if not eq:  # like docker: NAME alone takes the value from the environment
            env = os.environ.get(key)
            if env is None:
                continue
            value = env
        values[key] = value
    return values


def _build_dockerfile(args: argparse.Namespace, console: Console) -> int:
    from .dockerfile import build_dockerfile  # imports the gVisor runtime: only when needed

    settings = _settings(args.data_dir)
    dockerfile = Path(args.dockerfile)
    context = Path(args.context) if args.context is not None else dockerfile.parent
    started = time.monotonic()

    def log(line: str) -> None:
        if not args.quiet or line.startswith("warning:"):
            console.print(line, highlight=False, markup=False, soft_wrap=True)

    info = asyncio.run(
        build_dockerfile(
            settings,
            args.name,
            context=context,
            dockerfile=dockerfile,
            build_args=_build_args(args.build_arg),
            target=args.target,
            no_cache=args.no_cache,
            on_log=log,
        )
    )
    steps = (read_manifest(info.rootfs.parent) or {}).get("steps") or []
    cached = sum(1 for step in steps if isinstance(step, dict) and step.get("cached"))
    _collect(settings, info.name, console)
    console.print(
        f"[green]template {info.name!r} ready[/] (version {info.version}) at {info.rootfs} "
        f"({_human(info.size_bytes)}, {len(steps)} steps, {cached} cached, "
        f"{time.monotonic() - started:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _cache_prune(args: argparse.Namespace, console: Console) -> int:
    from .dockerfile.cache import BuildCache

    settings = _settings(args.data_dir)
    keep: set[str] = set()
    store = TemplateStore(settings)
    manifests = [
        read_manifest(store.manifest_path(t.name, v).parent)
        for t in store.list()
        for v in t.versions
    ]
    for manifest in manifests:
        for step in (manifest or {}).get("steps") or []:
            if isinstance(step, dict) and isinstance(step.get("key"), str):
                keep.add(step["key"])
    result = BuildCache(settings).prune(
        keep, everything=args.all, older_than=args.keep_hours * 3600
    )
    console.print(
        f"removed {result.removed} cache entries ({_human(result.bytes_freed)}), "
        f"kept {result.kept}",
        highlight=False,
    )
    return 0


def _pull(args: argparse.Namespace, console: Console) -> int:
    settings = _settings(args.data_dir)
    creds = args.creds or os.environ.get("ATELIER_REGISTRY_CREDS") or None

    def pull(on_progress: Callable[[ProgressEvent], None] | None) -> TemplateInfo:
        return pull_template(
            settings,
            args.name,
            args.image_ref,
            credentials=creds,
            on_progress=on_progress,
            force=args.force,
        )

    return _run_with_progress(args, console, pull)


def _import(args: argparse.Namespace, console: Console) -> int:
    settings = _settings(args.data_dir)

    def load(on_progress: Callable[[ProgressEvent], None] | None) -> TemplateInfo:
        return import_archive(
            settings, args.name, args.file, on_progress=on_progress, force=args.force
        )

    return _run_with_progress(args, console, load)


def _run_with_progress(args: argparse.Namespace, console: Console, build: Build) -> int:
    started = time.monotonic()
    if args.quiet:
        info = build(None)
    elif not console.is_terminal:
        info = build(_Lines(console))
    else:
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[detail]}"),
            console=console,
        ) as progress:
            info = build(_Bar(progress))
    elapsed = time.monotonic() - started
    _collect(_settings(args.data_dir), info.name, console)
    console.print(
        f"[green]template {info.name!r} ready[/] (version {info.version}) at {info.rootfs} "
        f"({_human(info.size_bytes)}, {elapsed:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _ls(args: argparse.Namespace, console: Console) -> int:
    templates = TemplateStore(_settings(args.data_dir)).list()
    if not templates:
        console.print("no templates; build one with: python -m atelier.images build base")
        return 0
    table = Table(
        "name",
        "version",
        "kept",
        "builder",
        "source",
        "runtime",
        "ready",
        "size",
        "created",
        "rootfs",
    )
    for t in templates:
        builder, source = _origin(t)
        table.add_row(
            t.name,
            str(t.version),
            ",".join(map(str, t.versions)) or "-",
            builder,
            source,
            t.runtime,
            "yes" if t.ready else "[red]no[/]",
            _human(t.size_bytes),
            t.created_at.isoformat() if t.created_at else "-",
            str(t.rootfs),
        )
    console.print(table)
    return 0


def _origin(info: TemplateInfo) -> tuple[str, str]:
    """(builder, what it was built from) for ``ls``."""
    manifest = read_manifest(info.rootfs.parent) or {}
    builder = str(manifest.get("builder") or "-")
    if builder == "oci":
        source = manifest.get("image_ref") or manifest.get("archive") or "-"
        digest = manifest.get("digest")
        if isinstance(digest, str) and manifest.get("image_ref"):
            source = f"{source} ({digest[:19]})"
        return builder, str(source)
    if builder == "debootstrap":
        return builder, f"debian {manifest.get('suite') or '?'}"
    if builder == "dockerfile":
        return builder, str(manifest.get("dockerfile") or "-")
    return builder, "-"


def _usage(settings: Settings, name: str) -> tuple[list[str], set[int] | None]:
    """(sandboxes using ``name``, their pinned versions or None if unknown), read
    from the server's database; ([], set()) when there is no database yet."""
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if not path or not Path(path).exists():
            return [], set()

    async def read() -> tuple[list[str], set[int] | None]:
        from sqlalchemy.exc import OperationalError, ProgrammingError

        from ..store.db import Database
        from ..store.repository import Repository

        db = Database(url)
        try:
            return await Repository(db).template_usage(name)
        except (OperationalError, ProgrammingError):  # no tables: no sandboxes yet
            return [], set()
        finally:
            await db.close()

    return asyncio.run(read())


def _collect(settings: Settings, name: str, console: Console) -> None:
    """After a publish: delete the versions of ``name`` no sandbox uses."""
    _ids, keep = _usage(settings, name)
    removed = TemplateStore(settings).collect_garbage(name, keep)
    if removed:
        console.print(
            f"removed unused versions {', '.join(map(str, removed))} of {name!r}",
            highlight=False,
        )


def _rm(args: argparse.Namespace, console: Console) -> int:
    settings = _settings(args.data_dir)
    store = TemplateStore(settings)
    info = store.get(args.name)
    ids, _versions = _usage(settings, args.name)
    if ids:
        raise TemplateInUse(
            f"template {args.name!r} is used by {len(ids)} sandbox(es): {', '.join(ids)}; "
            "delete them first",
            details={"template": args.name, "sandbox_ids": ids},
        )
    was_oci = (read_manifest(info.rootfs.parent) or {}).get("builder") == "oci"
    store.remove(args.name)
    if was_oci:
        remove_image_tag(settings, args.name)  # and free the layers no one else uses
    console.print(f"removed template {args.name!r}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m atelier.images", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="Atelier data directory (default: $ATELIER_DATA_DIR or /var/lib/atelier)",
    )
    build = sub.add_parser(
        "build", parents=[common], help="build a Debian template, or one from a Dockerfile"
    )
    build.add_argument("name", nargs="?", default="base")
    build.add_argument("--force", action="store_true", help="rebuild even if it is ready")
    build.add_argument("--include", help="extra Debian packages, comma-separated")
    build.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    build.add_argument(
        "--dockerfile", "-f", metavar="PATH", help="build from this Dockerfile instead"
    )
    build.add_argument(
        "--context", metavar="DIR", help="build context (default: the Dockerfile's directory)"
    )
    build.add_argument(
        "--build-arg", action="append", metavar="K=V", help="a build argument (repeatable)"
    )
    build.add_argument("--target", metavar="STAGE", help="build this stage (default: the last)")
    build.add_argument(
        "--no-cache", action="store_true", help="run every step again (the cache is refreshed)"
    )
    build.set_defaults(func=_build)
    cache = sub.add_parser("cache", help="the Dockerfile build cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    prune = cache_sub.add_parser(
        "prune",
        parents=[common],
        help="delete cache entries no template's manifest lists",
    )
    prune.add_argument("--all", action="store_true", help="delete every entry")
    prune.add_argument(
        "--keep-hours",
        type=float,
        default=0.0,
        metavar="H",
        help="also keep entries used in the last H hours",
    )
    prune.set_defaults(func=_cache_prune)
    pull = sub.add_parser("pull", parents=[common], help="make a template from a registry image")
    pull.add_argument("name")
    pull.add_argument("image_ref", metavar="IMAGE_REF", help="e.g. alpine:3, ghcr.io/org/img:tag")
    pull.add_argument(
        "--creds", help="USER:TOKEN for a private registry (or $ATELIER_REGISTRY_CREDS)"
    )
    pull.add_argument("--force", action="store_true", help="replace an existing template")
    pull.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    pull.set_defaults(func=_pull)
    imp = sub.add_parser(
        "import", parents=[common], help="make a template from an OCI or docker-save tarball"
    )
    imp.add_argument("name")
    imp.add_argument("file", type=Path, metavar="FILE.tar")
    imp.add_argument("--force", action="store_true", help="replace an existing template")
    imp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    imp.set_defaults(func=_import)
    ls = sub.add_parser("ls", parents=[common], help="list templates")
    ls.set_defaults(func=_ls)
    rm = sub.add_parser("rm", parents=[common], help="remove a template")
    rm.add_argument("name")
    rm.set_defaults(func=_rm)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    errors = Console(stderr=True)
    try:
        code: int = args.func(args, console)
    except AtelierError as exc:
        first, _, rest = exc.message.partition("\n")
        errors.print(f"[bold red]error:[/] {first}", highlight=False)
        if rest:
            errors.print(rest, style="dim", highlight=False, markup=False)
        return 1
    except OSError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        errors.print("[bold red]interrupted[/]")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
