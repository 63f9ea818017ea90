"""The environment a Feature sees when it installs, and the one it leaves behind.

* :func:`feature_install_env` — what ``install.sh`` runs with: the option
  variables (:func:`~atelier.workspaces.features.resolve_feature_options`) plus
  the spec's ``_REMOTE_USER``, ``_CONTAINER_USER``, ``_REMOTE_USER_HOME`` and
  ``_CONTAINER_USER_HOME``;
* :func:`feature_container_env` — the image's environment after the Feature's
  ``containerEnv``, which the spec applies as ``ENV`` lines (so
  ``"PATH": "/opt/x/bin:${PATH}"`` extends the image's ``PATH``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from atelier.workspaces.features import FeatureMetadata, ResolvedOptions

__all__ = ["expand_env_references", "feature_container_env", "feature_install_env"]


def feature_install_env(
    options: ResolvedOptions,
    *,
    container_user: str = "root",
    container_user_home: str = "/root",
    remote_user: str | None = None,
    remote_user_home: str | None = None,
) -> dict[str, str]:
    """The variables ``install.sh`` runs with. Without a ``remoteUser`` the remote
    user is the container user (the spec's rule); the homes come from the image."""
    env = dict(options.env)
    env["_CONTAINER_USER"] = container_user
    env["_CONTAINER_USER_HOME"] = container_user_home
    env["_REMOTE_USER"] = remote_user or container_user
    env["_REMOTE_USER_HOME"] = remote_user_home or (
        container_user_home
        if not remote_user or remote_user == container_user
        else f"/home/{remote_user}"
    )
    return env


_ENV_REFERENCE = re.compile(
    r"\\\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def expand_env_references(value: str, env: Mapping[str, str]) -> str:
    """Dockerfile ``ENV``-style expansion of ``$VAR``, ``${VAR}``, ``${VAR:-x}``, ``${VAR:+x}``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "\\$":
            return "$"
        name = match.group(1) or match.group(4)
        current = env.get(name, "")
        if match.group(2) == "-":
            return current or match.group(3)
        if match.group(2) == "+":
            return match.group(3) if current else ""
        return current

    return _ENV_REFERENCE.sub(one, value)


def feature_container_env(metadata: FeatureMetadata, base_env: Mapping[str, str]) -> dict[str, str]:
    """``base_env`` after the Feature's ``containerEnv``, applied like successive ``ENV`` lines
    (``"PATH": "/usr/local/go/bin:${PATH}"`` extends the image's ``PATH``)."""
    env = dict(base_env)
    for key, value in metadata.container_env.items():
        env[key] = expand_env_references(value, env)
    return env
