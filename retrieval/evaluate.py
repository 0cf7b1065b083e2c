"""Offline evaluation: baselines, running rankers over a split, and weight tuning.

Everything here is Ray-free and takes plain data: a `Split`, ranked lists,
candidate pools with their fusion features. `llmrec eval` (deployments/evaluation.py)
wires the served or in-process pipeline to it.

Baselines rank the whole catalog with the user's history excluded:
popularity (distinct users), item-kNN (summed neighbour similarity), ALS
(`implicit`), EASE (`ease`: the history's rows of the closed-form item-item
weights summed; `ease_recent`: the same, recency-weighted), and content (the
recency-weighted profile of history vectors, exact inner-product search over
every item vector). Ties and items a model cannot score fall back to
popularity order.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from tqdm import tqdm

from retrieval.collab import AlsModel, ItemKNN
from retrieval.ease import EaseModel, recency_weights
from retrieval.fusion import FEATURES, FusionWeights
from retrieval.metrics import ndcg_at_k, paired_bootstrap, rank_in_pool
from retrieval.profiles import user_profile

if TYPE_CHECKING:
    from retrieval.sequential import SequentialModel

__all__ = [
    "AlsRanker",
    "ContentRanker",
    "EaseRanker",
    "ItemKNNRanker",
    "PopularityRanker",
    "Ranker",
    "RecentEaseRanker",
    "RerankHead",
    "SequentialRanker",
    "fusion_grid",
    "rank_all",
    "rank_all_async",
    "rerank_ndcg_by_weight",
    "rerank_ndcg_per_user",
    "sample_users",
    "tune_fusion",
    "tune_rerank_weight",
]

RERANK_WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
PROFILE_HALF_LIFE_GRID = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Profile half-lives (interactions) `--tune` tries, each with the whole weight grid: a short
one follows the current sitting, a long one the user's lasting tastes."""
_GRID_STEPS = {
    "ann": (0.0, 0.1, 0.25, 0.5, 1.0),
    "item_knn": (0.0, 0.25, 0.5, 1.0),
    "als": (0.0, 0.25, 0.5, 1.0),
    "popularity": (0.0, 0.1, 0.2, 0.4, 0.8),
    "ease": (0.0, 0.25, 0.5, 1.0),
    "sequential": (0.0, 0.25, 0.5, 1.0),
}


class Ranker(Protocol):
    """Ranks catalog items for a history: `rank(history, n)` → up to `n` unseen item ids."""

    name: str

    def rank(self, history: Sequence[str], n: int) -> list[str]: ...


class _ScoreRanker:
    """Top `n` by a score over the catalog, popularity breaking ties, history excluded."""

    name = "scores"

    def __init__(self, item_ids: Sequence[str], popularity: np.ndarray) -> None:
        self.item_ids = list(item_ids)
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        by_popularity = np.argsort(-np.asarray(popularity, np.float64), kind="stable")
        self._popularity_rank = np.empty(len(by_popularity), dtype=np.int64)
        self._popularity_rank[by_popularity] = np.arange(len(by_popularity))

    def scores(self, history: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def rank(self, history: Sequence[str], n: int) -> list[str]:
        scores = np.asarray(self.scores(history), dtype=np.float64)
        keys = np.lexsort((self._popularity_rank, -scores))  # by score, then popularity
        seen = {self.index[i] for i in history if i in self.index}
        out = []
        for pos in keys:
            if pos not in seen:
                out.append(self.item_ids[pos])
                if len(out) == n:
                    break
        return out


class PopularityRanker(_ScoreRanker):
    """Most popular unseen items (distinct users in the training log)."""

    name = "popularity"

    def __init__(self, knn: ItemKNN) -> None:
        super().__init__(knn.item_ids, knn.popularity)
        self._zeros = np.zeros(len(knn.item_ids))

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self._zeros


class ItemKNNRanker(_ScoreRanker):
    """Item-kNN: summed cosine similarity of each item to the history's items."""

    name = "item_knn"

    def __init__(self, knn: ItemKNN) -> None:
        super().__init__(knn.item_ids, knn.popularity)
        self.knn = knn

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.knn.scores(history)


class AlsRanker(_ScoreRanker):
    """ALS: the user's factor solved from the history, dotted with every item factor."""

    name = "als"

    def __init__(self, als: AlsModel, popularity: np.ndarray) -> None:
        super().__init__(als.item_ids, popularity)
        self.als = als

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.als.scores(history)


class EaseRanker(_ScoreRanker):
    """EASE: the summed item-item weights of the history's items (each counted once)."""

    name = "ease"

    def __init__(self, ease: EaseModel, popularity: np.ndarray) -> None:
        super().__init__(ease.item_ids, popularity)
        self.ease = ease

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.ease.scores(history)


class RecentEaseRanker(_ScoreRanker):
    """EASE over a recency-weighted history: an item `half_life` interactions before the
    latest counts half (a repeated item by its latest occurrence)."""

    name = "ease_recent"

    def __init__(self, ease: EaseModel, popularity: np.ndarray, *, half_life: float = 5.0) -> None:
        if half_life <= 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        super().__init__(ease.item_ids, popularity)
        self.ease = ease
        self.half_life = half_life

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.ease.scores(history, recency_weights(len(history), self.half_life))


class SequentialRanker(_ScoreRanker):
    """Sequential: self-attention over the latest `max_len` history items, oldest first,
    scoring every item as the next one."""

    name = "sequential"

    def __init__(self, model: SequentialModel, popularity: np.ndarray) -> None:
        super().__init__(model.item_ids, popularity)
        self.model = model

    def scores(self, history: Sequence[str]) -> np.ndarray:
        return self.model.scores(history)


class ContentRanker(_ScoreRanker):
    """Content only: the router's profile (last `max_history` items, recency-weighted
    mean of item vectors) against every item vector, exactly."""

    name = "content"

    def __init__(
        self,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        popularity: np.ndarray,
        *,
        half_life: float,
        max_history: int,
    ) -> None:
        super().__init__(item_ids, popularity)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.half_life = half_life
        self.max_history = max_history

    def scores(self, history: Sequence[str]) -> np.ndarray:
        rows = [self.index[i] for i in history if i in self.index][-self.max_history :]
        if not rows:
            return np.zeros(len(self.item_ids))
        return self.vectors @ user_profile(self.vectors[rows], self.half_life)


def sample_users(users: Sequence[str], n: int | None, seed: int) -> list[str]:
    """`n` users drawn without replacement with `seed` (all of them when `n` is None or larger)."""
    users = list(users)
    if n is None or n >= len(users):
        return users
    return sorted(random.Random(seed).sample(users, n), key=users.index)


def rank_all(
    ranker: Ranker,
    users: Sequence[str],
    histories: Mapping[str, Sequence[str]],
    depth: int,
    *,
    progress: bool = True,
) -> tuple[dict[str, list[str]], list[float]]:
    """Each user's top `depth` from `ranker`, and the seconds each took."""
    rankings: dict[str, list[str]] = {}
    seconds: list[float] = []
    for user in tqdm(users, desc=f"{ranker.name:>12}", unit="user", disable=not progress):
        t = time.perf_counter()
        rankings[user] = ranker.rank(histories[user], depth)
        seconds.append(time.perf_counter() - t)
    return rankings, seconds


async def rank_all_async(
    rank: Callable[[str], Awaitable[list[str]]],
    users: Sequence[str],
    *,
    desc: str,
    concurrency: int = 1,
    progress: bool = True,
) -> tuple[dict[str, list[str]], list[float]]:
    """`rank(user)` for every user, at most `concurrency` at once; rankings and seconds each.

    With `concurrency` 1 the seconds are unloaded latencies.
    """
    limit = asyncio.Semaphore(concurrency)
    rankings: dict[str, list[str]] = {}
    seconds: list[float] = []
    bar = tqdm(total=len(users), desc=f"{desc:>12}", unit="user", disable=not progress)

    async def one(user: str) -> None:
        async with limit:
            t = time.perf_counter()
            rankings[user] = await rank(user)
            seconds.append(time.perf_counter() - t)
            bar.update(1)

    try:
        await asyncio.gather(*(one(u) for u in users))
    finally:
        bar.close()
    return {u: rankings[u] for u in users}, seconds


def fusion_grid() -> list[np.ndarray]:
    """Feature-weight vectors (`FEATURES` order) to try, one per distinct ratio, none all-zero."""
    seen: set[tuple[float, ...]] = set()
    out = []
    for combo in itertools.product(*(_GRID_STEPS[name] for name in FEATURES)):
        w = np.asarray(combo, dtype=np.float64)
        if not w.any():
            continue
        key = tuple(np.round(w / w.max(), 6))
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out


def _target_ranks(
    item_ids: Sequence[str], features: np.ndarray, target: str, weights: np.ndarray
) -> np.ndarray:
    """0-based rank of `target` under each weight row (stable sort by fused score); −1 if absent."""
    try:
        t = list(item_ids).index(target)
    except ValueError:
        return np.full(len(weights), -1)
    return rank_in_pool(np.asarray(features, np.float64) @ weights.T, t)  # (items, grid)


def tune_fusion(
    pools: Mapping[str, tuple[Sequence[str], np.ndarray]],
    targets: Mapping[str, str],
    k: int,
    grid: Sequence[np.ndarray] | None = None,
    *,
    base: FusionWeights | None = None,
) -> tuple[FusionWeights, list[tuple[np.ndarray, float]]]:
    """The grid point with the best mean NDCG@k over `pools`, and every point's NDCG.

    `pools[user]` is `(item ids, features (n, 4))`, the candidate pool of one
    validation user in pool order (ties keep it, as the router's sort does).
    The first best point wins, so among equals the earlier grid point is kept.
    """
    grid = list(grid if grid is not None else fusion_grid())
    weights = np.stack(grid)
    total = np.zeros(len(grid))
    for user, (item_ids, features) in pools.items():
        ranks = _target_ranks(item_ids, features, targets[user], weights)
        total += np.asarray([ndcg_at_k(int(r) if r >= 0 else None, k) for r in ranks])
    mean = total / max(len(pools), 1)
    best = int(np.argmax(mean))
    chosen = (base or FusionWeights()).with_features(grid[best])
    return chosen, list(zip(grid, mean.tolist(), strict=True))


@dataclass(frozen=True)
class RerankHead:
    """One user's ranked list and the LLM's view of its head.

    `ranked` is the retrieval order (item ids); the first `len(llm)` items
    are the lettered head, with their fused `retrieval` scores and the LLM's
    normalised letter scores `llm` (what the reranker blends at weight 1).
    """

    ranked: list[str]
    retrieval: list[float]
    llm: list[float]


def _min_max(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min() if len(v) else 0.0
    return (v - v.min()) / span if span > 0 else np.zeros(len(v))


def _reranked(head: RerankHead, weight: float) -> list[str]:
    n = len(head.llm)
    blended = weight * _min_max(head.llm) + (1.0 - weight) * _min_max(head.retrieval)
    order = sorted(range(n), key=lambda j: -blended[j])
    return [head.ranked[j] for j in order] + head.ranked[n:]


def rerank_ndcg_per_user(
    heads: Mapping[str, RerankHead],
    targets: Mapping[str, str],
    k: int,
    weights: Sequence[float] = RERANK_WEIGHT_GRID,
) -> dict[float, dict[str, float]]:
    """Each user's NDCG@k of the reranked list, for each LLM weight of the blend.

    Reproduces the reranker's blend (min-max normalised retrieval and LLM
    scores, stable order); weight 0 is the retrieval order itself.
    """
    out: dict[float, dict[str, float]] = {}
    for w in weights:
        gains: dict[str, float] = {}
        for user, head in heads.items():
            ranked = _reranked(head, w)
            target = targets[user]
            gains[user] = ndcg_at_k(ranked.index(target) if target in ranked else None, k)
        out[float(w)] = gains
    return out


def rerank_ndcg_by_weight(per_user: Mapping[float, Mapping[str, float]]) -> dict[float, float]:
    """Mean NDCG@k for each weight of `rerank_ndcg_per_user`'s table."""
    return {w: float(np.mean(list(g.values()))) if g else 0.0 for w, g in per_user.items()}


def tune_rerank_weight(
    per_user: Mapping[float, Mapping[str, float]], *, seed: int = 0
) -> tuple[float, dict[str, float | int | list[float]] | None]:
    """The LLM weight to serve, and the best weight's paired lift (None when 0 is the best).

    The weight with the best mean NDCG (the smallest among equals) is kept only
    when its lift over weight 0 (the retrieval order), paired by user, has a
    bootstrap interval above 0; otherwise the answer is 0: an LLM call per
    request is not bought for a gain the validation users do not support.
    """
    means = rerank_ndcg_by_weight(per_user)
    best = max(means.values())
    weight = min(w for w, v in means.items() if v >= best)
    if weight == 0.0 or 0.0 not in per_user:
        return 0.0, None
    users = sorted(per_user[0.0])
    lift = paired_bootstrap(
        [per_user[0.0][u] for u in users], [per_user[weight][u] for u in users], seed=seed
    )
    low = lift["ci"][0]  # type: ignore[index]
    return (weight if low > 0 else 0.0), lift
