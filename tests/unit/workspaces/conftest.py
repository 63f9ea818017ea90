"""Helpers for the Dev Container model tests: small repositories written on the fly."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

WriteRepo = Callable[[dict[str, str]], Path]


@pytest.fixture
def write_repo(tmp_path: Path) -> WriteRepo:
    """``write_repo({"path/in/repo": "text"})`` → the repository folder (named ``myrepo``)."""

    def write(files: dict[str, str]) -> Path:
        root = tmp_path / "myrepo"
        root.mkdir(exist_ok=True)
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return root

    return write
