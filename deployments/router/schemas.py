"""The HTTP API v1 request and response bodies (see DESIGN.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RecommendRequest", "RecommendResponse", "RecommendedItem", "Filters"]


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


class RecommendResponse(_Strict):
    items: list[RecommendedItem]
    reranked: bool
    degraded: list[str]
    timings_ms: dict[str, float]
    request_id: str
