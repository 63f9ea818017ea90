"""Doctor verdicts from fake host facts, and their rendering."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from atelier.config import Settings
from atelier.doctor import HostFacts, evaluate, render
from atelier.images.store import TemplateInfo
from atelier.runtimes.base import RuntimeAvailability

PVM = (False, "kvm: /dev/kvm is a PVM host that cannot boot a standard guest")
GVISOR_OK = RuntimeAvailability("gvisor", True, "runsc 20221219, platform ptrace")
QEMU_TCG = RuntimeAvailability("qemu", True, "QEMU 7.2.15, accel tcg (PVM host)")
FC_DOWN = RuntimeAvailability(
    "firecracker",
    False,
    "firecracker binary not found (set ATELIER_FIRECRACKER_BIN or put firecracker on PATH); "
    "kvm: /dev/kvm is a PVM host that cannot boot a standard guest",
)


def facts(tmp_path: Path, **overrides: object) -> HostFacts:
    base = HostFacts(
        euid=0,
        cgroup="hybrid",
        overlayfs=True,
        loop_devices=True,
        kvm=PVM,
        systemd=False,
        data_dir_writable=(True, str(tmp_path)),
        debootstrap="debootstrap 1.0.128+nmu2+deb12u2",
        runsc="runsc version 0.0~20221219.0",
        runsc_platform=("ptrace", "no systrap in this runsc"),
        runtimes=(GVISOR_OK, QEMU_TCG, FC_DOWN),
        template=TemplateInfo(
            "base", "gvisor", True, 200 * 2**20, datetime.now(UTC), tmp_path / "rootfs"
        ),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def text(report_facts: HostFacts, tmp_path: Path) -> str:
    console = Console(record=True, width=240, color_system=None)
    render(evaluate(settings(tmp_path), report_facts), console)
    return console.export_text()


def test_runtime_verdicts_are_the_runtimes_own(tmp_path: Path) -> None:
    report = evaluate(settings(tmp_path), facts(tmp_path))
    assert report.ok
    assert report.problems == []
    assert report.runtimes == [GVISOR_OK, QEMU_TCG, FC_DOWN]
    kvm = next(c for c in report.checks if c.name == "kvm")
    assert not kvm.ok and not kvm.required
    out = text(facts(tmp_path), tmp_path)
    assert "ATELIER_FIRECRACKER_BIN" in out and "accel tcg" in out


def test_gather_facts_asks_every_host_runtime(tmp_path: Path) -> None:
    from atelier.doctor import gather_facts

    names = [r.name for r in gather_facts(settings(tmp_path)).runtimes]
    assert names[0] == "gvisor" and "firecracker" in names


def test_default_runtime_unavailable_is_not_ok(tmp_path: Path) -> None:
    down = RuntimeAvailability("gvisor", False, "runsc binary 'runsc' not found (install gVisor)")
    f = facts(tmp_path, runtimes=(down,), runsc=None, runsc_platform=None, euid=1000)
    report = evaluate(settings(tmp_path), f)
    assert not report.ok
    assert {c.name for c in report.problems} == {"root", "runsc"}
    out = text(f, tmp_path)
    assert "not ready: default runtime gvisor is unavailable" in out
    assert "runsc binary 'runsc' not found" in out


def test_missing_and_half_built_template(tmp_path: Path) -> None:
    report = evaluate(settings(tmp_path), facts(tmp_path, template=None))
    check = next(c for c in report.checks if c.name == "template")
    assert not check.ok
    assert "python -m atelier.images build base" in check.detail
    half = TemplateInfo("base", "gvisor", False, None, None, tmp_path / "rootfs")
    report = evaluate(settings(tmp_path), facts(tmp_path, template=half))
    check = next(c for c in report.checks if c.name == "template")
    assert not check.ok and "--force" in check.detail
    assert report.ok  # the runtime itself is fine


def test_render_tables(tmp_path: Path) -> None:
    out = text(facts(tmp_path), tmp_path)
    assert "Host" in out and "Runtimes" in out
    assert "gvisor (default)" in out
    assert "PVM host that cannot boot a standard guest" in out
    assert "warn" in out  # kvm is not required
    assert "ready: default runtime gvisor is available" in out
    assert "'base' ready (200 MiB)" in out


def test_render_does_not_interpret_markup_in_details(tmp_path: Path) -> None:
    down = RuntimeAvailability("gvisor", False, "odd [bold]reason[/bold] [x]")
    out = text(facts(tmp_path, runtimes=(down,)), tmp_path)
    assert "odd [bold]reason[/bold] [x]" in out
