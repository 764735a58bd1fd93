"""Request and response models shared by the resource modules (pydantic, strict, no extras)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from admin.inputs import refuse_nul


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # Every string field, in every request model: no NUL (admin.inputs).
    _no_nul = field_validator("*", mode="after")(refuse_nul)


class Page(BaseModel):
    items: list[Any]
    next_cursor: str | None


Role = Literal["owner", "admin", "editor", "viewer"]
Name = Field(min_length=1, max_length=200)
