"""Choosing runsc's platform from fake host facts."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.runtimes.gvisor import platform as plat

CPU_VMX = "processor\t: 0\nflags\t\t: fpu vme sse2 vmx ssse3\n"
CPU_NONE = "processor\t: 0\nflags\t\t: fpu vme sse2 ssse3 hypervisor\n"
FLAGS_LINE = (
    "  -platform string\n"
    '    \tspecifies which platform to use: ptrace (default), kvm. (default "ptrace")\n'
)


def test_parse_platforms() -> None:
    assert plat.parse_platforms("ptrace\nkvm\n") == ("ptrace", "kvm")
    assert plat.parse_platforms("systrap\nptrace\nkvm\n") == ("systrap", "ptrace", "kvm")
    assert plat.parse_platforms(FLAGS_LINE) == ("ptrace", "kvm")
    assert plat.parse_platforms("") == ()


@pytest.fixture
def kvm_dev(tmp_path: Path) -> Path:
    dev = tmp_path / "kvm"
    dev.write_text("")
    return dev


def test_kvm_missing(tmp_path: Path) -> None:
    ok, why = plat.kvm_usable(tmp_path / "kvm", tmp_path / "pvm", CPU_VMX)
    assert not ok
    assert "does not exist" in why


def test_kvm_pvm_is_refused(kvm_dev: Path, tmp_path: Path) -> None:
    pvm = tmp_path / "kvm_pvm"
    pvm.mkdir()
    ok, why = plat.kvm_usable(kvm_dev, pvm, CPU_VMX)
    assert not ok
    assert "PVM" in why


def test_kvm_needs_vmx_or_svm(kvm_dev: Path, tmp_path: Path) -> None:
    ok, why = plat.kvm_usable(kvm_dev, tmp_path / "none", CPU_NONE)
    assert not ok
    assert "vmx" in why
    ok, _ = plat.kvm_usable(kvm_dev, tmp_path / "none", CPU_VMX)
    assert ok
    ok, _ = plat.kvm_usable(kvm_dev, tmp_path / "none", CPU_NONE.replace("sse2", "svm"))
    assert ok


def test_kvm_unopenable(tmp_path: Path) -> None:
    dev = tmp_path / "kvm"
    dev.mkdir()  # exists, but opening it read-write fails (EISDIR)
    ok, why = plat.kvm_usable(dev, tmp_path / "none", CPU_VMX)
    assert not ok
    assert "cannot be opened" in why


GOOD_KVM = (True, "kvm ok")
BAD_KVM = (False, "nested PVM")


def test_forced_wins() -> None:
    choice = plat.choose_platform(("ptrace", "kvm"), "kvm", BAD_KVM)
    assert (choice.name, choice.forced, choice.usable) == ("kvm", True, True)


def test_forced_but_unsupported_is_unusable() -> None:
    choice = plat.choose_platform(("ptrace", "kvm"), "systrap", GOOD_KVM)
    assert choice.name == "systrap"
    assert not choice.usable
    assert "only has" in choice.reason


def test_systrap_preferred() -> None:
    assert plat.choose_platform(("systrap", "ptrace", "kvm"), None, GOOD_KVM).name == "systrap"


def test_kvm_when_usable() -> None:
    assert plat.choose_platform(("ptrace", "kvm"), None, GOOD_KVM).name == "kvm"


def test_ptrace_fallback_says_why() -> None:
    choice = plat.choose_platform(("ptrace", "kvm"), None, BAD_KVM)
    assert choice.name == "ptrace"
    assert "nested PVM" in choice.reason
    assert "systrap" in choice.reason
    assert choice.usable


def test_kvm_not_offered() -> None:
    assert plat.choose_platform(("ptrace",), None, GOOD_KVM).name == "ptrace"


def test_detect_with_a_fake_runsc(tmp_path: Path) -> None:
    fake = tmp_path / "runsc"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "help platforms" ] && printf "systrap\\nptrace\\n"\n')
    fake.chmod(0o755)
    plat.detect_platform.cache_clear()
    try:
        choice = plat.detect_platform(str(fake))
        assert choice.name == "systrap"
        assert choice.supported == ("systrap", "ptrace")
        assert plat.detect_platform(str(fake)) is choice  # cached
    finally:
        plat.detect_platform.cache_clear()


def test_runsc_platforms_from_flags(tmp_path: Path) -> None:
    fake = tmp_path / "runsc"
    script = f"#!/bin/sh\n[ \"$1\" = flags ] && cat <<'X'\n{FLAGS_LINE}X\nexit 0\n"
    fake.write_text(script)
    fake.chmod(0o755)
    assert plat.runsc_platforms(str(fake)) == ("ptrace", "kvm")
    assert plat.runsc_platforms(str(tmp_path / "missing")) == ()
