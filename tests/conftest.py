"""Fixtures shared by the whole suite.

``base_template``: the ``base`` template, built once per machine into
``$ATELIER_TEST_DATA_DIR`` (default ``/var/tmp/atelier-test``) and reused by
every later test session (``make test`` builds it before pytest starts).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.images.debootstrap import build_template
from atelier.images.store import TemplateInfo, TemplateStore
from ci_support import skip_unless_ci

DEFAULT_TEST_DATA_DIR = "/var/tmp/atelier-test"


@pytest.fixture(scope="session")
def test_data_dir() -> Path:
    """The data dir whose ``templates/`` holds the session-wide template cache."""
    return Path(os.environ.get("ATELIER_TEST_DATA_DIR") or DEFAULT_TEST_DATA_DIR)


@pytest.fixture(scope="session")
def base_template(test_data_dir: Path) -> TemplateInfo:
    """The ready ``base`` template (built on first use; skips where it cannot be built)."""
    settings = Settings(data_dir=test_data_dir)
    info = next((t for t in TemplateStore(settings).list() if t.name == "base"), None)
    if info is not None and info.ready:
        return info
    if os.geteuid() != 0:
        skip_unless_ci("building the base template needs root")
    if shutil.which("debootstrap", path="/usr/sbin:/sbin:/usr/bin:/bin") is None:
        skip_unless_ci("debootstrap is not installed (scripts/setup.sh deps)")
    return build_template(settings, "base")
