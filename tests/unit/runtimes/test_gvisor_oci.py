"""The OCI spec the gVisor runtime hands to runsc."""

from __future__ import annotations

import json
from pathlib import Path

from atelier.agent import bootstrap
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.gvisor import oci

PATHS = oci.BundlePaths(
    rootfs=Path("/data/sandboxes/s1/rootfs"),
    run_dir=Path("/data/sandboxes/s1/run"),
    agent_dir=Path("/opt/atelier/agent"),
    tmp_dir=Path("/data/sandboxes/s1/layer/tmp"),
)


def spec(**kw: object) -> SandboxSpec:
    base: dict[str, object] = {"sandbox_id": "s1", "template": "base", "rootfs": Path("/t/rootfs")}
    base.update(kw)
    return SandboxSpec(**base)  # type: ignore[arg-type]


def mounts_by_dest(cfg: dict[str, object]) -> dict[str, dict[str, object]]:
    return {m["destination"]: m for m in cfg["mounts"]}  # type: ignore[attr-defined,index]


def test_process_runs_the_agent_as_root() -> None:
    cfg = oci.build_config(spec(), PATHS)
    proc = cfg["process"]
    assert proc["args"] == bootstrap.agent_argv()
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["cwd"] == "/"
    assert proc["terminal"] is False
    env = dict(e.split("=", 1) for e in proc["env"])
    assert env["LANG"] == "C.UTF-8"
    assert env["HOME"] == "/root"
    assert "/usr/bin" in env["PATH"].split(":")
    caps = proc["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    assert "CAP_CHOWN" in caps["bounding"]


def test_argv_override() -> None:
    cfg = oci.build_config(spec(), PATHS, ["/bin/sleep", "1"])
    assert cfg["process"]["args"] == ["/bin/sleep", "1"]


def test_root_hostname_and_namespaces() -> None:
    cfg = oci.build_config(spec(hostname="devbox"), PATHS)
    assert cfg["root"] == {"path": "/data/sandboxes/s1/rootfs", "readonly": False}
    assert cfg["hostname"] == "devbox"
    kinds = {ns["type"] for ns in cfg["linux"]["namespaces"]}
    assert kinds == {"pid", "ipc", "uts", "mount"}
    assert all("path" not in ns for ns in cfg["linux"]["namespaces"])


def test_resources_follow_the_spec() -> None:
    cfg = oci.build_config(spec(vcpus=3, memory_mib=768), PATHS)
    linux = cfg["linux"]
    assert linux["cgroupsPath"] == "/atelier/s1"
    res = linux["resources"]
    assert res["cpu"] == {"period": 100_000, "quota": 300_000}
    assert res["memory"] == {"limit": 768 * 1024 * 1024}
    assert res["pids"] == {"limit": oci.PIDS_LIMIT}


def test_mounts() -> None:
    m = mounts_by_dest(oci.build_config(spec(memory_mib=1024), PATHS))
    assert m["/proc"]["type"] == "proc"
    assert m["/dev"]["type"] == "tmpfs"
    assert m["/dev/pts"]["type"] == "devpts"
    assert m["/dev/shm"]["type"] == "tmpfs"
    assert "size=512m" in m["/dev/shm"]["options"]  # type: ignore[operator]
    assert m["/sys"]["type"] == "sysfs"
    assert "ro" in m["/sys"]["options"]  # type: ignore[operator]
    agent = m[f"{bootstrap.AGENT_MOUNT}/agent"]
    assert agent["source"] == "/opt/atelier/agent"
    assert "ro" in agent["options"]  # type: ignore[operator]
    run = m[bootstrap.RUN_DIR]
    assert run["source"] == "/data/sandboxes/s1/run"
    assert "rw" in run["options"]  # type: ignore[operator]
    # /tmp lives on the disk layer, not in memory
    assert m["/tmp"]["type"] == "bind"
    assert m["/tmp"]["source"] == "/data/sandboxes/s1/layer/tmp"


def test_no_tmp_mount_without_tmp_dir() -> None:
    paths = oci.BundlePaths(PATHS.rootfs, PATHS.run_dir, PATHS.agent_dir)
    assert "/tmp" not in mounts_by_dest(oci.build_config(spec(), paths))


def test_labels_become_annotations() -> None:
    cfg = oci.build_config(spec(labels={"team": "x"}), PATHS)
    assert cfg["annotations"]["dev.atelier.sandbox-id"] == "s1"
    assert cfg["annotations"]["dev.atelier.label.team"] == "x"


def test_write_config(tmp_path: Path) -> None:
    cfg = oci.build_config(spec(), PATHS)
    path = oci.write_config(tmp_path / "bundle", cfg)
    assert path == tmp_path / "bundle" / "config.json"
    assert json.loads(path.read_text()) == cfg
    assert not list((tmp_path / "bundle").glob("*.tmp"))
