"""Offline ranking metrics for one held-out item per user.

Every user contributes one ranked list and one target. With a single relevant
item, Recall@k is a hit (target in the top k), NDCG@k is `1 / log2(rank + 2)`
for a 0-based rank below k (the ideal DCG is 1) and the reciprocal rank is
`1 / (rank + 1)` anywhere in the list (0 when the target is missing). Catalog
coverage is the share of catalog items that appear in at least one user's
top k.

Latency percentiles everywhere in llmrec (the load tester's reports, the
benchmarks, `llmrec eval`) are nearest rank: the p-th percentile of n sorted
values is the value at rank ceil(p/100 * n). `percentile` is that one definition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RankingMetrics",
    "catalog_coverage",
    "latency_summary",
    "ndcg_at_k",
    "paired_bootstrap",
    "per_user_ndcg",
    "per_user_recall",
    "percentile",
    "percentile_ms",
    "rank_in_pool",
    "rank_of",
    "recall_at_k",
    "reciprocal_rank",
    "score_rankings",
]


def rank_of(ranked: Sequence[str], target: str) -> int | None:
    """0-based position of `target` in `ranked`, or None when it is absent."""
    for pos, item_id in enumerate(ranked):
        if item_id == target:
            return pos
    return None


def rank_in_pool(scores: Any, position: int) -> Any:
    """0-based rank of the candidate at `position` when a pool is sorted by `scores`, best
    first, ties in pool order (a stable sort, as the router's); per column when `scores`
    is a 2-D array (one column per scoring)."""
    mine = scores[position]
    return (scores > mine).sum(axis=0) + (scores[:position] == mine).sum(axis=0)


def recall_at_k(rank: int | None, k: int) -> float:
    """1.0 when the target sits in the top `k`, else 0.0."""
    return 1.0 if rank is not None and rank < k else 0.0


def ndcg_at_k(rank: int | None, k: int) -> float:
    """`1 / log2(rank + 2)` for a target in the top `k`, else 0.0 (one relevant item)."""
    return 1.0 / math.log2(rank + 2) if rank is not None and rank < k else 0.0


def reciprocal_rank(rank: int | None) -> float:
    """`1 / (rank + 1)`, 0.0 when the target is absent from the ranked list."""
    return 0.0 if rank is None else 1.0 / (rank + 1)


def catalog_coverage(rankings: Iterable[Sequence[str]], k: int, catalog_size: int) -> float:
    """Share of the catalog's `catalog_size` items shown in at least one top `k`."""
    if catalog_size <= 0:
        raise ValueError("catalog_size must be positive")
    shown: set[str] = set()
    for ranked in rankings:
        shown.update(ranked[:k])
    return len(shown) / catalog_size


@dataclass(frozen=True)
class RankingMetrics:
    """Means over `users` of Recall@k, NDCG@k and reciprocal rank, plus catalog coverage."""

    k: int
    users: int
    recall: float
    ndcg: float
    mrr: float
    coverage: float

    def to_json(self) -> dict[str, float | int]:
        """`{"recall_at_K", "ndcg_at_K", "mrr", "coverage", "users"}` with K = `k`."""
        return {
            f"recall_at_{self.k}": round(self.recall, 6),
            f"ndcg_at_{self.k}": round(self.ndcg, 6),
            "mrr": round(self.mrr, 6),
            "coverage": round(self.coverage, 6),
            "users": self.users,
        }


def score_rankings(
    rankings: Mapping[str, Sequence[str]],
    targets: Mapping[str, str],
    k: int,
    catalog_size: int,
) -> RankingMetrics:
    """Metrics of `rankings` (user → ranked item ids) against `targets` (user → item).

    Every user in `rankings` must have a target (`KeyError` otherwise). The
    reciprocal rank reads the whole ranked list, so its depth bounds the MRR.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    ranks = [rank_of(ranked, targets[user]) for user, ranked in rankings.items()]
    n = len(ranks)
    mean = (lambda xs: sum(xs) / n) if n else (lambda xs: 0.0)
    return RankingMetrics(
        k=k,
        users=n,
        recall=mean([recall_at_k(r, k) for r in ranks]),
        ndcg=mean([ndcg_at_k(r, k) for r in ranks]),
        mrr=mean([reciprocal_rank(r) for r in ranks]),
        coverage=catalog_coverage(rankings.values(), k, catalog_size),
    )


def per_user_ndcg(
    rankings: Mapping[str, Sequence[str]], targets: Mapping[str, str], k: int
) -> dict[str, float]:
    """NDCG@k of each user's ranking (the values `score_rankings` averages)."""
    return {user: ndcg_at_k(rank_of(ranked, targets[user]), k) for user, ranked in rankings.items()}


def per_user_recall(
    rankings: Mapping[str, Sequence[str]], targets: Mapping[str, str], k: int
) -> dict[str, float]:
    """Recall@k of each user's ranking: 1.0 when the target is in the top k, else 0.0."""
    return {
        user: recall_at_k(rank_of(ranked, targets[user]), k) for user, ranked in rankings.items()
    }


def paired_bootstrap(
    before: Sequence[float],
    after: Sequence[float],
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int | list[float]]:
    """Mean of `after - before` over paired samples (users) and its bootstrap interval.

    The users are resampled with replacement `resamples` times (seeded); the
    interval is the percentile interval of the resampled means at `level`. An
    interval that excludes 0 is a lift (or loss) the sample supports.
    """
    import numpy as np

    if len(before) != len(after) or not before:
        raise ValueError("paired_bootstrap needs two non-empty samples of the same length")
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[picks].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"mean": float(diff.mean()), "ci": [float(low), float(high)], "users": len(diff)}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending values; q in [0, 100]; 0.0 when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} outside [0, 100]")
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * n))
    return float(sorted_values[rank - 1])


def percentile_ms(seconds: Iterable[float], q: float) -> float:
    """Nearest-rank percentile `q` of durations in seconds, in milliseconds; 0.0 when empty."""
    return percentile(sorted(seconds), q) * 1000.0


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """`{"mean", "p50", "p95", "max"}` in milliseconds (zeros for no samples)."""
    if not seconds:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "mean": round(sum(seconds) / len(seconds) * 1000.0, 2),
        "p50": round(percentile_ms(seconds, 50), 2),
        "p95": round(percentile_ms(seconds, 95), 2),
        "max": round(max(seconds) * 1000.0, 2),
    }
