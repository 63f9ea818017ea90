"""hostRequirements sizes → MiB, and the resources they imply."""

from __future__ import annotations

import pytest

from atelier.workspaces import HostRequirements, parse_size
from atelier.workspaces.resources import parse_host_requirements, size_to_mib


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("1kb", 1024),
        ("4096mb", 4096 * 1024**2),
        ("4gb", 4 * 1024**3),
        ("2tb", 2 * 1024**4),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1.5tb", "4GB", "4 gb", "4g", "-1", "gb", "", "4pb"])
def test_sizes_outside_the_schema_pattern(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_mib_round_up() -> None:
    assert size_to_mib("4gb") == 4096
    assert size_to_mib("4096mb") == 4096
    assert size_to_mib("1") == 1
    assert size_to_mib("1048577") == 2
    assert size_to_mib("0") == 0


def test_mapping_and_apply() -> None:
    req = parse_host_requirements({"cpus": 8, "memory": "16gb", "storage": "64gb", "gpu": True})
    assert req == HostRequirements(vcpus=8, memory_mib=16384, disk_mib=65536, gpu=True)
    assert req.needs_gpu
    assert req.apply(vcpus=2, memory_mib=32768, disk_mib=2048) == (8, 32768, 65536)
    assert parse_host_requirements(None) == HostRequirements()
    assert HostRequirements().apply(vcpus=1, memory_mib=512, disk_mib=2048) == (1, 512, 2048)
    assert not parse_host_requirements({"gpu": "optional"}).needs_gpu
    assert parse_host_requirements({"gpu": {"cores": 2}}).needs_gpu
