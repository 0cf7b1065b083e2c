"""What the router tells Ray's Prometheus endpoint about every answer (`ray.serve.metrics`).

Series (Ray prefixes them `ray_`): `llmrec_stage_latency_ms{stage}` (a histogram of
`timings_ms`: encode, retrieve, rerank, explain, total), `llmrec_degraded_total{stage}`
(stages skipped: rerank, explain, shard-N), `llmrec_errors_total{type}` (answers that
were errors, by error type: overloaded, deadline_exceeded, …). Serve's own series
(request counts, queue lengths, latencies per deployment) sit beside them.
"""

from __future__ import annotations

from ray.serve import metrics

from deployments.router.schemas import RecommendResponse

__all__ = ["LATENCY_BOUNDARIES_MS", "RouterMetrics"]

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2000, 3000, 5000, 10000, 30000]


class RouterMetrics:
    """Created once per router replica (Ray metrics live in the replica process)."""

    def __init__(self) -> None:
        self.latency = metrics.Histogram(
            "llmrec_stage_latency_ms",
            description="Per-stage time of /v1/recommend answers (the timings_ms fields).",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("stage",),
        )
        self.degraded = metrics.Counter(
            "llmrec_degraded_total",
            description="Stages skipped to meet the deadline or because they failed.",
            tag_keys=("stage",),
        )
        self.errors = metrics.Counter(
            "llmrec_errors_total",
            description="Answers that were errors, by error type (overloaded, not_found, ...).",
            tag_keys=("type",),
        )

    def answered(self, response: RecommendResponse) -> None:
        for stage, ms in response.timings_ms.items():
            self.latency.observe(ms, tags={"stage": stage})
        for stage in response.degraded:
            self.degraded.inc(tags={"stage": "shard" if stage.startswith("shard-") else stage})

    def failed(self, kind: str) -> None:
        self.errors.inc(tags={"type": kind})
