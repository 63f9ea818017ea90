"""Template images: root filesystem trees that sandboxes boot from.

``store`` reads and removes templates (``TemplateStore``); ``debootstrap``
builds Debian ones (``build_template``); ``python -m atelier.images`` is the
command line for both.
"""

from __future__ import annotations

from .store import TemplateInfo, TemplateStore

__all__ = ["TemplateInfo", "TemplateStore"]
