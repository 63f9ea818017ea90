"""``atelier doctor``: what this host can run, and why not the rest.

Two steps, so the verdicts can be unit-tested without a host:
:func:`gather_facts` probes the host (read-only) into :class:`HostFacts`;
:func:`evaluate` turns facts into a :class:`DoctorReport`. :func:`run_checks`
does both; :func:`render` prints a report with Rich. The CLI's ``doctor``
command calls ``run_checks`` + ``render`` and exits non-zero unless
``report.ok`` (the default runtime is available).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import hostinfo
from .config import Settings
from .images.store import TemplateInfo, TemplateStore
from .runtimes.base import RuntimeAvailability

__all__ = [
    "Check",
    "DoctorReport",
    "HostFacts",
    "evaluate",
    "gather_facts",
    "render",
    "run_checks",
]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True  # False: a failure is only a warning (e.g. no KVM)


@dataclass(frozen=True, slots=True)
class DoctorReport:
    checks: list[Check]
    runtimes: list[RuntimeAvailability]
    default_runtime: str

    def runtime(self, name: str) -> RuntimeAvailability | None:
        return next((r for r in self.runtimes if r.name == name), None)

    @property
    def ok(self) -> bool:
        """True when the default runtime can run sandboxes here."""
        status = self.runtime(self.default_runtime)
        return status is not None and status.available

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.required and not c.ok]


@dataclass(frozen=True, slots=True)
class HostFacts:
    """Everything :func:`evaluate` needs, as plain data."""

    euid: int
    cgroup: str  # hostinfo.cgroup_version()
    overlayfs: bool
    loop_devices: bool
    kvm: tuple[bool, str]  # hostinfo.kvm_status()
    systemd: bool
    data_dir_writable: tuple[bool, str]
    debootstrap: str | None  # version line, None if missing
    runsc: str | None
    runsc_platform: tuple[str, str] | None  # (name, reason), None if runsc is missing
    runtimes: tuple[RuntimeAvailability, ...]  # what each runtime says about itself
    template: TemplateInfo | None  # the default template, None if absent


def _runsc_platform(settings: Settings) -> tuple[str, str] | None:
    if shutil.which(settings.runsc_bin) is None:
        return None
    from .runtimes.gvisor.platform import detect_platform

    choice = detect_platform(settings.runsc_bin, settings.runsc_platform)
    return choice.name, choice.reason


def gather_facts(settings: Settings) -> HostFacts:
    """Probe the host. Read-only: creates no file, directory or process that stays."""
    from .runtimes.host import host_runtimes

    store = TemplateStore(settings)
    template = next((t for t in store.list() if t.name == settings.default_template), None)
    return HostFacts(
        euid=os.geteuid(),
        cgroup=hostinfo.cgroup_version(),
        overlayfs=hostinfo.overlayfs_supported(),
        loop_devices=hostinfo.loop_devices_available(),
        kvm=hostinfo.kvm_status(),
        systemd=hostinfo.systemd_running(),
        data_dir_writable=hostinfo.dir_writable(settings.data_dir),
        debootstrap=hostinfo.tool_version(
            "debootstrap", which=lambda n: shutil.which(n, path=_sbin_path())
        ),
        runsc=hostinfo.tool_version(settings.runsc_bin),
        runsc_platform=_runsc_platform(settings),
        runtimes=tuple(rt.availability() for rt in host_runtimes(settings)),
        template=template,
    )


def _sbin_path() -> str:
    return ":".join(
        [os.environ.get("PATH", "/usr/bin:/bin"), "/usr/local/sbin", "/usr/sbin", "/sbin"]
    )


def _size(size: int | None) -> str:
    return f"{size / 2**20:.0f} MiB" if size is not None else "size unknown"


def _checks(settings: Settings, f: HostFacts) -> list[Check]:
    kvm_ok, kvm_reason = f.kvm
    checks = [
        Check(
            "root",
            f.euid == 0,
            "running as root" if f.euid == 0 else f"running as uid {f.euid}; sandboxes need root",
        ),
        Check(
            "cgroups",
            f.cgroup != "none",
            {
                "v1": "cgroup v1",
                "v2": "cgroup v2 (unified)",
                "hybrid": "cgroup v1 controllers + v2 (hybrid)",
                "none": "no cgroup filesystem mounted at /sys/fs/cgroup",
            }.get(f.cgroup, f.cgroup),
        ),
        Check(
            "overlayfs",
            f.overlayfs,
            "supported" if f.overlayfs else "the kernel has no overlayfs (modprobe overlay)",
        ),
        Check(
            "loop devices",
            f.loop_devices,
            "available" if f.loop_devices else "no /dev/loop-control (modprobe loop)",
        ),
        Check("kvm", kvm_ok, kvm_reason.removeprefix("kvm: "), required=False),
        Check(
            "systemd",
            True,
            "running: atelierctl installs atelier.service"
            if f.systemd
            else "not running: atelierctl supervises the server with a pid file",
            required=False,
        ),
        Check(
            "debootstrap",
            f.debootstrap is not None,
            f.debootstrap or "not found (apt-get install debootstrap); needed to build templates",
        ),
        Check("runsc", f.runsc is not None, f.runsc or f"{settings.runsc_bin!r} not found"),
    ]
    if f.runsc_platform is not None:
        name, reason = f.runsc_platform
        checks.append(Check("runsc platform", True, f"{name}: {reason}"))
    ok, detail = f.data_dir_writable
    checks.append(Check("data dir", ok, detail))
    name = settings.default_template
    if f.template is not None and f.template.ready:
        detail = f"{name!r} ready ({_size(f.template.size_bytes)}) at {f.template.rootfs}"
        checks.append(Check("template", True, detail))
    else:
        state = "not built" if f.template is None else "incomplete"
        fix = f"python -m atelier.images build {name}" + ("" if f.template is None else " --force")
        checks.append(Check("template", False, f"{name!r} {state}: run {fix}"))
    return checks


def evaluate(settings: Settings, facts: HostFacts) -> DoctorReport:
    """The verdicts for ``facts`` (pure: no probing)."""
    return DoctorReport(
        checks=_checks(settings, facts),
        runtimes=list(facts.runtimes),
        default_runtime=settings.default_runtime,
    )


def run_checks(settings: Settings) -> DoctorReport:
    return evaluate(settings, gather_facts(settings))


def render(report: DoctorReport, console: Console) -> None:
    host = Table(title="Host", title_justify="left", show_header=True, expand=False)
    host.add_column("check")
    host.add_column("status")
    host.add_column("detail", overflow="fold")
    for check in report.checks:
        if check.ok:
            status = "[green]ok[/]"
        elif check.required:
            status = "[red]FAIL[/]"
        else:
            status = "[yellow]warn[/]"
        host.add_row(check.name, status, Text(check.detail))
    console.print(host)

    runtimes = Table(title="Runtimes", title_justify="left", show_header=True, expand=False)
    runtimes.add_column("runtime")
    runtimes.add_column("available")
    runtimes.add_column("reason", overflow="fold")
    for rt in report.runtimes:
        label = rt.name + (" (default)" if rt.name == report.default_runtime else "")
        available = "[green]yes[/]" if rt.available else "[red]no[/]"
        runtimes.add_row(Text(label), available, Text(rt.reason))
    console.print(runtimes)

    default = report.runtime(report.default_runtime)
    if report.ok:
        console.print(f"[green]ready:[/] default runtime {report.default_runtime} is available")
    else:
        why = default.reason if default else "unknown runtime"
        name = report.default_runtime
        console.print(
            f"[red]not ready:[/] default runtime {name} is unavailable: {escape(why)}",
            highlight=False,
        )
    for problem in report.problems:
        console.print(f"[red]-[/] {problem.name}: {escape(problem.detail)}", highlight=False)
