"""Which template a workspace runs on, made if needed.

* no configuration, or one without ``image``/``build``: the default template;
* ``image``: pulled into ``img-<hash of the reference>`` (a second workspace
  on the same image reuses it; mirrors apply as for ``template pull``);
* ``build.dockerfile``: built into ``ws-<hash of repository + config>`` by the
  Dockerfile builder, whose step cache makes a rebuild of an unchanged
  Dockerfile nearly free;
* ``features``: installed on top by a generated Dockerfile (one ``COPY`` and
  one ``RUN ./install.sh`` per Feature, in the Feature install order, with its
  options as environment variables and its ``containerEnv`` as ``ENV``), built
  into ``wsf-<hash of base + Features + options>``.

Features from an OCI registry or a tarball URL (and the Features they
``dependsOn``) are fetched first (``feature_fetch.py``: mirrors, digests,
cache) and then installed like local ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ...config import Settings
from ...errors import ValidationFailed
from ...images.oci import pull_template
from ...images.store import TemplateStore
from ...workspaces import (
    DevContainerConfig,
    FeatureRef,
    ResolvedFeature,
    feature_install_env,
    load_feature_metadata,
    order_features,
    resolve_feature_options,
)
from .feature_fetch import fetch_features

__all__ = ["FEATURES_DIR", "features_dockerfile", "resolve_template"]

FEATURES_DIR = "/var/tmp/atelier-features"  # not /tmp: a sandbox mounts its own /tmp
Log = Callable[[str], None]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def resolve_features(
    config: DevContainerConfig, features: Sequence[FeatureRef] | None = None
) -> list[ResolvedFeature]:
    """The Features with their metadata, in install order.

    ``features`` defaults to ``config.features``; pass what
    :func:`~.feature_fetch.fetch_features` returns (the OCI and tarball
    Features fetched, with their ``dependsOn`` dependencies) to install more
    than local folders. Every Feature must have its folder (``ref.path``).
    """
    resolved = []
    for ref in config.features if features is None else features:
        if ref.path is None:
            raise ValidationFailed(
                f'Feature {ref.ref!r}: only Features from a local folder ("./name") are '
                "resolved without fetching them first (feature_fetch.fetch_features)",
                details={"property": "features", "feature": ref.ref},
            )
        resolved.append(ResolvedFeature(ref=ref, metadata=load_feature_metadata(ref.path)))
    return order_features(
        resolved, config.override_feature_install_order, config_dir=config.config_dir
    )


def features_dockerfile(
    base: str, features: list[ResolvedFeature], config: DevContainerConfig
) -> str:
    """The Dockerfile that installs ``features`` on template ``base``; the build
    context holds each Feature's folder as ``feature-<n>/``."""
    lines = [f"FROM {base}", "USER root"]
    for index, feature in enumerate(features):
        options = resolve_feature_options(feature.metadata, feature.ref.options)
        env = feature_install_env(
            options,
            container_user=config.container_user or "root",
            container_user_home="/root" if not config.container_user else "",
            remote_user=config.remote_user,
        )
        if not env["_CONTAINER_USER_HOME"]:
            env["_CONTAINER_USER_HOME"] = f"/home/{config.container_user}"
        target = f"{FEATURES_DIR}/{index}"
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        lines.append(f"COPY feature-{index}/ {target}/")
        lines.append(f"RUN cd {target} && chmod +x install.sh && env {assignments} ./install.sh")
        for key, value in feature.metadata.container_env.items():
            lines.append(f"ENV {key}={json.dumps(value)}")
    lines.append(f"RUN rm -rf {FEATURES_DIR}")
    return "\n".join(lines) + "\n"


async def _pull(settings: Settings, image: str, log: Log) -> str:
    name = f"img-{_digest(image)}"
    log(f"image {image} -> template {name}")

    def progress(event: object) -> None:
        message = getattr(event, "message", "")
        if message:
            log(str(message))

    await asyncio.to_thread(pull_template, settings, name, image, on_progress=progress)
    return name


async def _build(
    settings: Settings,
    name: str,
    *,
    context: Path,
    dockerfile: Path,
    build_args: dict[str, str],
    target: str | None,
    log: Log,
) -> str:
    from ...images.dockerfile import build_dockerfile  # the builder needs runsc

    log(f"building template {name} from {dockerfile.name}")
    await build_dockerfile(
        settings,
        name,
        context=context,
        dockerfile=dockerfile,
        build_args=build_args,
        target=target,
        on_log=log,
    )
    return name


async def resolve_template(
    settings: Settings, config: DevContainerConfig | None, *, repo_key: str, log: Log
) -> str:
    """The name of the (ready) template the workspace of ``config`` runs on."""
    if config is None:
        name = settings.workspace_template
    elif config.image:
        name = await _pull(settings, config.image, log)
    elif config.build is not None:
        build = config.build
        name = await _build(
            settings,
            f"ws-{_digest(repo_key, str(config.config_path.relative_to(config.repo_dir)))}",
            context=build.context,
            dockerfile=build.dockerfile,
            build_args=dict(build.args),
            target=build.target,
            log=log,
        )
    else:
        name = settings.workspace_template
    TemplateStore(settings).rootfs(name)  # exists and is ready
    if config is None or not config.features:
        return name
    with tempfile.TemporaryDirectory(prefix=".features-", dir=settings.data_dir) as tmp:
        fetched = await fetch_features(settings, config, Path(tmp) / "fetched", log=log)
        features = resolve_features(config, fetched)
        dockerfile = features_dockerfile(name, features, config)
        key = _digest(name, str(TemplateStore(settings).get(name).created_at), dockerfile)
        context = Path(tmp) / "context"
        context.mkdir()
        for index, feature in enumerate(features):
            assert feature.ref.path is not None
            shutil.copytree(feature.ref.path, context / f"feature-{index}", symlinks=True)
        (context / "Dockerfile").write_text(dockerfile)
        return await _build(
            settings,
            f"wsf-{key}",
            context=context,
            dockerfile=context / "Dockerfile",
            build_args={},
            target=None,
            log=log,
        )
