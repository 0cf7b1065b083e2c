"""The Reranker Serve deployment: a thin wrapper around `RerankerCore` and its vLLM engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import metrics

from deployments.logs import replica_logging
from deployments.reranker.core import Explanation, RerankerCore, RerankOutcome
from deployments.reranker.prompts import PromptContext
from retrieval.config import RerankerConfig

__all__ = ["Reranker"]


class _Metrics:
    """The LLM queue and prefix cache on Ray's metrics endpoint, updated after every call."""

    def __init__(self) -> None:
        self.pending = metrics.Gauge(
            "llmrec_llm_pending", description="LLM calls in flight on this replica."
        )
        self.refused = metrics.Counter(
            "llmrec_llm_refused_total",
            description="LLM calls refused at once: queue_full, or deadline (could not finish).",
            tag_keys=("reason",),
        )
        self.cache_hit = metrics.Gauge(
            "llmrec_llm_prefix_cache_hit_rate",
            description="Share of prompt tokens served from vLLM's prefix cache, since start.",
            tag_keys=("stage",),
        )
        self._refused = {"queue_full": 0, "deadline": 0}

    def publish(self, described: dict[str, Any]) -> None:
        self.pending.set(described["pending"])
        for reason, count in described["refused"].items():
            if count > self._refused[reason]:
                self.refused.inc(count - self._refused[reason], tags={"reason": reason})
                self._refused[reason] = count
        for stage in ("rerank", "explain"):
            rate = described[stage]["prefix_cache_hit_rate"]
            self.cache_hit.set(rate, tags={"stage": stage})


@serve.deployment(health_check_period_s=30)
class Reranker:
    """One vLLM engine per replica; concurrent requests are batched by the engine itself.

    The replica becomes ready only after a real rerank and real explanations
    (`RerankerCore.warm_up`), so no user request meets a cold engine.
    """

    # Ray Serve awaits an async constructor; type checkers expect `__init__` to return None.
    async def __init__(self, config: dict, models_dir: str) -> None:  # type: ignore[misc]
        replica_logging()
        self.core = RerankerCore(RerankerConfig.model_validate(config), Path(models_dir))
        self.metrics = _Metrics()
        await self.core.warm_up()

    async def rerank(
        self,
        context: PromptContext,
        retrieval_scores: list[float],
        weight: float | None = None,
        deadline: float | None = None,
        explain_after: int = 0,
    ) -> RerankOutcome:
        try:
            return await self.core.rerank(
                context, retrieval_scores, weight, deadline, explain_after
            )
        finally:
            self.metrics.publish(self.core.describe())

    async def explain(
        self,
        context: PromptContext,
        targets: list[int],
        item_text_chars: int | None = None,
        deadline: float | None = None,
    ) -> list[Explanation]:
        try:
            return await self.core.explain(context, targets, item_text_chars, deadline)
        finally:
            self.metrics.publish(self.core.describe())

    def describe(self) -> dict[str, Any]:
        return self.core.describe()

    async def check_health(self) -> None:
        await self.core.check_health()

    def __del__(self) -> None:
        if hasattr(self, "core"):
            self.core.shutdown()
