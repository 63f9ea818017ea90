"""Finding the ``devcontainer.json`` of a checked-out repository.

The spec's search locations, in order:

1. ``.devcontainer/devcontainer.json``
2. ``.devcontainer.json``
3. ``.devcontainer/<name>/devcontainer.json`` (one level deep)

One candidate is used as is; several need an explicit choice (the error lists
them); none means the repository has no dev container configuration. An
explicit choice may be a path relative to the repository (a file, or a folder
holding ``devcontainer.json``) or the ``<name>`` of a ``.devcontainer/<name>/``
folder. Nothing outside the repository is ever read, symlinks included: the
repository is untrusted input on the host.
"""

from __future__ import annotations

from pathlib import Path

from atelier.errors import FileNotFound, InvalidPath, InvalidRequest

__all__ = ["CONFIG_NAME", "find_devcontainer_configs", "locate_devcontainer"]

CONFIG_NAME = "devcontainer.json"
_FOLDER = ".devcontainer"


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # symlink loops
        return False


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def find_devcontainer_configs(repo_dir: Path) -> tuple[Path, ...]:
    """Every configuration in the spec's search locations, in search order.

    Candidates that are not regular files, or that resolve outside
    ``repo_dir`` (a symlink pointing elsewhere), are skipped.
    """
    root = Path(repo_dir)
    folder = root / _FOLDER
    candidates = [folder / CONFIG_NAME, root / f".{CONFIG_NAME}"]
    if folder.is_dir() and _inside(folder, root):
        candidates.extend(sorted(p / CONFIG_NAME for p in folder.iterdir() if p.is_dir()))
    return tuple(p for p in candidates if p.is_file() and _inside(p, root))


def locate_devcontainer(repo_dir: Path, explicit: str | Path | None = None) -> Path | None:
    """The configuration to use, or ``None`` if the repository has none.

    Raises :class:`~atelier.errors.InvalidRequest` (details ``candidates``)
    when several exist and ``explicit`` is not given,
    :class:`~atelier.errors.FileNotFound` when ``explicit`` names nothing, and
    :class:`~atelier.errors.InvalidPath` when it points outside the repository.
    """
    root = Path(repo_dir)
    if explicit is not None and str(explicit) != "":
        return _explicit(root, Path(explicit))
    found = find_devcontainer_configs(root)
    if len(found) > 1:
        names = [_rel(p, root) for p in found]
        raise InvalidRequest(
            f"{len(found)} dev container configurations found ({', '.join(names)}): "
            "choose one explicitly (e.g. `atelier up --devcontainer PATH`)",
            details={"candidates": names},
        )
    return found[0] if found else None


def _explicit(root: Path, explicit: Path) -> Path:
    if explicit.is_absolute():
        raise InvalidPath(
            f"devcontainer path must be relative to the repository: {explicit}",
            details={"path": str(explicit)},
        )
    tried = [root / explicit]
    if (root / explicit).is_dir():
        tried = [root / explicit / CONFIG_NAME, root / explicit / f".{CONFIG_NAME}"]
    if len(explicit.parts) == 1:
        tried.append(root / _FOLDER / explicit / CONFIG_NAME)  # a configuration's folder name
    for path in tried:
        if not _inside(path, root):
            raise InvalidPath(
                f"devcontainer path leaves the repository: {explicit}",
                details={"path": str(explicit)},
            )
        if path.is_file():
            return path
    candidates = [_rel(p, root) for p in find_devcontainer_configs(root)]
    hint = f"; found: {', '.join(candidates)}" if candidates else "; the repository has none"
    raise FileNotFound(
        f"no dev container configuration at {explicit.as_posix()}{hint}",
        details={"path": explicit.as_posix(), "candidates": candidates},
    )
