"""Request and response bodies of the template and operation routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "OperationBody",
    "OperationList",
    "OperationOut",
    "TemplateDetailList",
    "TemplateDetailOut",
    "TemplatePullIn",
]


class TemplateDetailOut(BaseModel):
    name: str
    runtime: str
    ready: bool
    size_bytes: int | None
    version: int = Field(description="the current version: what new sandboxes get")
    versions: list[int] = Field(description="every version on disk (older ones are in use)")
    created_at: datetime | None = None


class TemplateDetailList(BaseModel):
    templates: list[TemplateDetailOut]


class TemplatePullIn(BaseModel):
    name: str = Field(description="the template to make (a new version if it exists)")
    image: str = Field(description="an image reference, e.g. alpine:3 or ghcr.io/org/img:tag")
    credentials: str | None = Field(
        default=None, description='"user:token" for a private registry; never stored or logged'
    )
    force: bool = Field(
        default=False, description="pull again even if the template came from this image"
    )


class OperationOut(BaseModel):
    id: str
    kind: str = Field(description="template.build or template.pull")
    target: str = Field(description="the template name")
    state: Literal["running", "succeeded", "failed"]
    owner: str | None = Field(default=None, description="the id of the token that started it")
    error: dict[str, Any] | None = Field(
        default=None, description='{"code", "message", "details"?} of a failed operation'
    )
    result: dict[str, Any] | None = Field(
        default=None, description='{"template", "version"} of a succeeded one'
    )
    created_at: datetime
    finished_at: datetime | None = None


class OperationBody(BaseModel):
    operation: OperationOut


class OperationList(BaseModel):
    operations: list[OperationOut]
