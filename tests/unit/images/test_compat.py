import ctypes
from pathlib import Path

from atelier.images.compat import SHIM_PATH, install_shims


def test_shim_builds_loads_and_is_preloaded_once(tmp_path: Path) -> None:
    install_shims(tmp_path)
    install_shims(tmp_path)  # idempotent
    preload = (tmp_path / "etc/ld.so.preload").read_text().splitlines()
    assert preload == ["/" + SHIM_PATH]
    lib = ctypes.CDLL(str(tmp_path / SHIM_PATH))
    buf = ctypes.create_string_buffer(256)
    AT_FDCWD, AT_NO_AUTOMOUNT, STATX_BASIC_STATS = -100, 0x800, 0x7FF
    assert lib.statx(AT_FDCWD, b"/", AT_NO_AUTOMOUNT, STATX_BASIC_STATS, buf) == 0
    assert lib.statx(AT_FDCWD, b"/does/not/exist", AT_NO_AUTOMOUNT, STATX_BASIC_STATS, buf) == -1


def test_existing_preload_entries_are_kept(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/ld.so.preload").write_text("/usr/lib/other.so\n")
    install_shims(tmp_path)
    assert (tmp_path / "etc/ld.so.preload").read_text().splitlines() == [
        "/usr/lib/other.so",
        "/" + SHIM_PATH,
    ]
