"""Workspaces: sandboxes made from a git repository and its ``devcontainer.json``.

``atelier up <url>`` / ``POST /v1/workspaces`` / ``Sandbox.create(repo=...)``:

1. clone the repository on the host (:mod:`atelier.git`; credentials stay on
   the host, never in the sandbox, its image or a log);
2. read its Dev Container configuration (:mod:`atelier.workspaces`);
3. resolve the template: the default one, an OCI ``image`` (pulled), a
   ``build.dockerfile`` (built) and ``features`` (installed by a generated
   build) -- :mod:`.templates`;
4. create the sandbox with ``hostRequirements`` and ``containerEnv``, copy the
   working tree into ``workspaceFolder`` (:mod:`.copy`);
5. run the lifecycle commands up to ``waitFor``; the rest continue in the
   background (:mod:`.lifecycle_runner`). A failing command leaves the
   workspace in state ``error`` with its output in the sandbox's logs.

See ``docs/workspaces.md``. The service lives in :mod:`.service` (not
re-exported here: the sandbox service imports :mod:`.setup_log`).
"""
