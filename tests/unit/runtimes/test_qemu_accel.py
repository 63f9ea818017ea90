"""Choosing KVM or TCG from fake host facts."""

from __future__ import annotations

from pathlib import Path

from atelier import hostinfo
from atelier.runtimes.qemu.accel import choose_accel, detect_accel

PVM = (False, "kvm: /dev/kvm is a PVM host that cannot boot a standard guest")
GOOD = (True, "kvm: /dev/kvm usable (vmx)")


def test_kvm_when_it_can_boot_a_guest() -> None:
    choice = choose_accel(GOOD)
    assert (choice.name, choice.cpu, choice.usable) == ("kvm", "host", True)
    assert choice.machine_accel == "kvm"


def test_tcg_on_a_pvm_host() -> None:
    choice = choose_accel(PVM)
    assert (choice.name, choice.cpu, choice.usable) == ("tcg", "qemu64", True)
    assert "PVM" in choice.reason
    assert choice.machine_accel.startswith("tcg,tb-size=")


def test_forced() -> None:
    assert choose_accel(GOOD, "tcg").name == "tcg"
    forced = choose_accel(PVM, "kvm")
    assert forced.name == "kvm" and not forced.usable and "PVM" in forced.reason
    bogus = choose_accel(GOOD, "hvf")
    assert not bogus.usable and "unknown" in bogus.reason


def test_detect_uses_kvm_status(tmp_path: Path) -> None:
    assert detect_accel(kvm_status=lambda: GOOD).name == "kvm"
    # the real probe with fake host files: a PVM host
    dev = tmp_path / "kvm"
    dev.write_text("")
    modules = tmp_path / "module"
    (modules / "kvm_pvm").mkdir(parents=True)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t: fpu sse2 hypervisor\n")

    def status() -> tuple[bool, str]:
        return hostinfo.kvm_status(dev, modules, cpuinfo, api_version=lambda _: 12)

    choice = detect_accel(kvm_status=status)
    assert choice.name == "tcg" and "PVM" in choice.reason
    missing = detect_accel(kvm_status=lambda: hostinfo.kvm_status(tmp_path / "nokvm"))
    assert missing.name == "tcg" and "does not exist" in missing.reason
