"""The HTTP API v1 request and response bodies (see DESIGN.md)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "FeedbackEvent",
    "Filters",
    "ItemIn",
    "RecommendRequest",
    "RecommendResponse",
    "RecommendedItem",
    "UpsertItemsRequest",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(_Strict):
    category: list[str] | None = Field(None, min_length=1, max_length=100)
    """Keep only items in at least one of these categories."""


class RecommendRequest(_Strict):
    user_id: str | None = Field(None, min_length=1, max_length=128)
    history: list[str] | None = Field(None, max_length=1000)
    query: str | None = Field(None, min_length=1, max_length=2000)
    k: int = Field(10, ge=1, le=100)
    exclude_seen: bool = True
    filters: Filters | None = None
    rerank: bool = False
    explain: bool = False
    deadline_ms: int | None = Field(None, ge=10, le=120_000)

    @model_validator(mode="after")
    def _needs_a_signal(self) -> RecommendRequest:
        if not (self.user_id or self.history or self.query):
            raise ValueError("give at least one of user_id, history, query")
        return self


class RecommendedItem(_Strict):
    item_id: str
    title: str
    score: float
    sources: list[str]
    categories: list[str] = []
    explanation: str | None = None
    explanation_source: Literal["llm", "template"] | None = None
    """`llm`: generated and checked against the item's own catalog facts; `template`: a reason
    built from the data alone, used when no generated one passed."""


class RecommendResponse(_Strict):
    items: list[RecommendedItem]
    reranked: bool
    degraded: list[str]
    timings_ms: dict[str, float]
    request_id: str


class ItemIn(_Strict):
    """One catalog item of `POST /v1/items`; it is encoded from its title and text."""

    item_id: str = Field(min_length=1, max_length=128)
    title: str = Field(min_length=1, max_length=1000)
    text: str = Field("", max_length=20_000)
    categories: list[str] = Field(default_factory=list, max_length=100)


class UpsertItemsRequest(_Strict):
    """`POST /v1/items`: add or replace items (each id at most once per request)."""

    items: list[ItemIn] = Field(min_length=1)

    @field_validator("items")
    @classmethod
    def _ids_unique(cls, items: list[ItemIn]) -> list[ItemIn]:
        seen: set[str] = set()
        for item in items:
            if item.item_id in seen:
                raise ValueError(f"item_id {item.item_id!r} appears more than once")
            seen.add(item.item_id)
        return items


class FeedbackEvent(_Strict):
    """`POST /v1/feedback`: one thing a user did with an item; it joins the user's history.

    Like a row of the interaction log: every event counts as an interaction.
    """

    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=128)
    event: str = Field("interact", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    """What happened, e.g. `click`, `purchase`, `play` (lower case, at most 32 characters)."""
    ts: int = Field(default_factory=lambda: int(time.time()), ge=0)
    """Unix seconds; the time the router received the event when left out."""
    event_id: str | None = Field(None, min_length=1, max_length=128)
    """The sender's id of this event: a retry with the same id (within
    `router.event_id_ttl_s`) is answered again and recorded once."""
