"""Workspaces from git repositories: the Dev Container configuration model.

Pure logic, no sandboxes: locate and parse ``devcontainer.json`` (JSON with
comments), validate it against the spec's schema, substitute variables, plan
the lifecycle commands, and resolve Features' options and install order.
See ``docs/workspaces.md``.
"""

from atelier.workspaces.devcontainer import (
    BuildSpec,
    DevContainerConfig,
    load_devcontainer,
    parse_devcontainer,
    resolve_container_env,
)
from atelier.workspaces.feature_env import (
    expand_env_references,
    feature_container_env,
    feature_install_env,
)
from atelier.workspaces.feature_order import ResolvedFeature, missing_dependencies, order_features
from atelier.workspaces.features import (
    FeatureKind,
    FeatureMetadata,
    FeatureOption,
    FeatureRef,
    ResolvedOptions,
    load_feature_metadata,
    option_env_name,
    parse_feature_metadata,
    parse_feature_ref,
    resolve_feature_options,
)
from atelier.workspaces.issues import ConfigIssue
from atelier.workspaces.jsonc import parse_jsonc
from atelier.workspaces.lifecycle import (
    Command,
    LifecycleCommand,
    LifecycleHook,
    LifecyclePlan,
    LifecycleStage,
    LifecycleStep,
    StepLocation,
    parse_lifecycle_command,
    plan_lifecycle,
)
from atelier.workspaces.locate import find_devcontainer_configs, locate_devcontainer
from atelier.workspaces.properties import ForwardPort, PortAttributes
from atelier.workspaces.resources import HostRequirements, parse_size
from atelier.workspaces.substitution import (
    SubstitutionContext,
    compute_devcontainer_id,
    substitute,
    substitute_container_env,
)

__all__ = [
    "BuildSpec",
    "Command",
    "ConfigIssue",
    "DevContainerConfig",
    "FeatureKind",
    "FeatureMetadata",
    "FeatureOption",
    "FeatureRef",
    "ForwardPort",
    "HostRequirements",
    "LifecycleCommand",
    "LifecycleHook",
    "LifecyclePlan",
    "LifecycleStage",
    "LifecycleStep",
    "PortAttributes",
    "ResolvedFeature",
    "ResolvedOptions",
    "StepLocation",
    "SubstitutionContext",
    "compute_devcontainer_id",
    "expand_env_references",
    "feature_container_env",
    "feature_install_env",
    "find_devcontainer_configs",
    "load_devcontainer",
    "load_feature_metadata",
    "locate_devcontainer",
    "missing_dependencies",
    "option_env_name",
    "order_features",
    "parse_devcontainer",
    "parse_feature_metadata",
    "parse_feature_ref",
    "parse_jsonc",
    "parse_lifecycle_command",
    "parse_size",
    "plan_lifecycle",
    "resolve_container_env",
    "resolve_feature_options",
    "substitute",
    "substitute_container_env",
]
