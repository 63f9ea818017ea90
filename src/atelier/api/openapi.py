"""Print the OpenAPI document generated from the app (``make openapi``)."""

from __future__ import annotations

import json
import sys
from typing import Any

from .app import create_app

__all__ = ["openapi_document"]


def openapi_document() -> dict[str, Any]:
    return create_app(runtimes=[]).openapi()


if __name__ == "__main__":
    json.dump(openapi_document(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
