"""Templates from Dockerfiles: RUN steps in gVisor sandboxes, every step cached.

``parser`` (syntax), ``substitution`` (quotes and ``$VAR``), ``context``
(.dockerignore, sources, content hashes), ``cache`` (the step cache),
``state`` (the image config), ``overlay`` (host mounts), ``fscopy``
(COPY/ADD/WORKDIR on the host), ``runstep`` (one RUN in a sandbox) and
``builder`` (:func:`build_dockerfile`, the whole build).
"""

from __future__ import annotations

from .builder import build_dockerfile, oci_template_name
from .cache import BuildCache
from .parser import Dockerfile, Instruction, Stage, parse_dockerfile

__all__ = [
    "BuildCache",
    "Dockerfile",
    "Instruction",
    "Stage",
    "build_dockerfile",
    "oci_template_name",
    "parse_dockerfile",
]
