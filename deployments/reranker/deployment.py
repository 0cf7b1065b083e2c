"""The Reranker Serve deployment: a thin wrapper around `RerankerCore` and its vLLM engine."""

from __future__ import annotations

from pathlib import Path

from ray import serve

from deployments.config import RerankerConfig
from deployments.reranker.core import RerankerCore
from deployments.reranker.prompts import Candidate

__all__ = ["Reranker"]


@serve.deployment(health_check_period_s=30)
class Reranker:
    """One vLLM engine per replica; concurrent requests are batched by the engine itself."""

    # Ray Serve awaits an async constructor; type checkers expect `__init__` to return None.
    async def __init__(self, config: dict, models_dir: str) -> None:  # type: ignore[misc]
        self.core = RerankerCore(RerankerConfig.model_validate(config), Path(models_dir))
        # The first step through a fresh engine is several times slower; take it before traffic.
        await self.core.check_health()

    async def rerank(
        self,
        history_titles: list[str],
        query: str | None,
        candidates: list[Candidate],
        retrieval_scores: list[float],
        weight: float | None = None,
    ) -> list[tuple[int, float]]:
        return await self.core.rerank(history_titles, query, candidates, retrieval_scores, weight)

    async def explain(
        self,
        history_titles: list[str],
        history_categories: list[list[str]],
        query: str | None,
        items: list[Candidate],
    ) -> list[tuple[str, bool]]:
        return await self.core.explain(history_titles, history_categories, query, items)

    async def check_health(self) -> None:
        await self.core.check_health()

    def __del__(self) -> None:
        if hasattr(self, "core"):
            self.core.shutdown()
