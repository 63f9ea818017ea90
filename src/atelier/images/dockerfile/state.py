"""The image config a stage accumulates (ENV, USER, WORKDIR, CMD, ...)."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..oci import ImageConfig

__all__ = ["DEFAULT_SHELL", "HOST_ARCH", "ImageState"]

DEFAULT_SHELL = ("/bin/sh", "-c")
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass(frozen=True, slots=True)
class ImageState:
    env: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    working_dir: str | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    exposed_ports: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str | None = None
    shell: tuple[str, ...] = DEFAULT_SHELL
    cmd_set: bool = field(default=False, compare=False)  # CMD given in this stage

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)

    def with_env(self, values: Mapping[str, str]) -> ImageState:
        env = dict(self.env)
        env.update(values)
        return replace(self, env=tuple(env.items()))

    def with_labels(self, values: Mapping[str, str]) -> ImageState:
        labels = dict(self.labels)
        labels.update(values)
        return replace(self, labels=tuple(labels.items()))

    @classmethod
    def from_config(cls, config: ImageConfig) -> ImageState:
        env = []
        for item in config.env:
            name, _, value = item.partition("=")
            if name:
                env.append((name, value))
        return cls(
            env=tuple(dict(env).items()),
            user=config.user,
            working_dir=config.working_dir,
            entrypoint=config.entrypoint,
            cmd=config.cmd,
            exposed_ports=tuple(config.exposed_ports),
            labels=tuple(config.labels.items()),
            stop_signal=config.stop_signal,
        )

    def image_config(self) -> ImageConfig:
        return ImageConfig(
            env=tuple(f"{k}={v}" for k, v in self.env),
            user=self.user,
            working_dir=self.working_dir,
            entrypoint=self.entrypoint,
            cmd=self.cmd,
            exposed_ports=tuple(sorted(self.exposed_ports)),
            labels=dict(self.labels),
            stop_signal=self.stop_signal,
            architecture=HOST_ARCH,
            os="linux",
        )

    def to_json(self) -> dict[str, Any]:
        data = self.image_config().to_json()
        data["shell"] = list(self.shell)
        return data
