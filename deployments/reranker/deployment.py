"""The Reranker Serve deployment: a thin wrapper around `RerankerCore` and its vLLM engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve

from deployments.config import RerankerConfig
from deployments.reranker.core import Explanation, RerankerCore, RerankOutcome
from deployments.reranker.prompts import PromptContext

__all__ = ["Reranker"]


@serve.deployment(health_check_period_s=30)
class Reranker:
    """One vLLM engine per replica; concurrent requests are batched by the engine itself.

    The replica becomes ready only after a real rerank and real explanations
    (`RerankerCore.warm_up`), so no user request meets a cold engine.
    """

    # Ray Serve awaits an async constructor; type checkers expect `__init__` to return None.
    async def __init__(self, config: dict, models_dir: str) -> None:  # type: ignore[misc]
        self.core = RerankerCore(RerankerConfig.model_validate(config), Path(models_dir))
        await self.core.warm_up()

    async def rerank(
        self,
        context: PromptContext,
        retrieval_scores: list[float],
        weight: float | None = None,
        deadline: float | None = None,
        explain_after: int = 0,
    ) -> RerankOutcome:
        return await self.core.rerank(
            context, retrieval_scores, weight, deadline=deadline, explain_after=explain_after
        )

    async def explain(
        self,
        context: PromptContext,
        targets: list[int],
        item_text_chars: int | None = None,
        deadline: float | None = None,
    ) -> list[Explanation]:
        return await self.core.explain(
            context, targets, item_text_chars=item_text_chars, deadline=deadline
        )

    def describe(self) -> dict[str, Any]:
        return self.core.describe()

    async def check_health(self) -> None:
        await self.core.check_health()

    def __del__(self) -> None:
        if hasattr(self, "core"):
            self.core.shutdown()
