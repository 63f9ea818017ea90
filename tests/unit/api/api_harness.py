"""Shared pieces of the in-process API tests."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
from fakes import ProcessRuntime
from fastapi import FastAPI

from atelier.config import Settings


@dataclass
class Api:
    app: FastAPI
    http: httpx.AsyncClient
    runtime: ProcessRuntime
    settings: Settings


def ready_template(settings: Settings, name: str = "base") -> None:
    tdir = settings.templates_dir / name
    (tdir / "rootfs").mkdir(parents=True)
    (tdir / "manifest.json").write_text(json.dumps({"name": name, "runtime": "gvisor"}))
