"""Learned fusion: a LightGBM LambdaRank model over the candidates' features.

The grid-searched weighted sum of `retrieval.fusion` treats every user alike
and every feature as linear. The learned fusion ranks a user's candidate pool
from the same six features plus what a weighted sum cannot use:

- each feature's rank within the pool (0 = best), as a fraction of the pool,
- the user's history length (`log1p`), so the model can trust the
  collaborative sources more for heavy users and popularity for light ones.

It is trained by `llmrec eval --tune` on the validation split, one query group
per user whose held-out item is in the pool (label 1 for it, 0 for the rest),
and kept only when, cross-fitted over the validation users, it ranks better
than the grid's weights by more than the bootstrap interval
(`tune_learned_fusion`).
The model is a LightGBM text file beside `fusion.json`; scoring a pool of a
few hundred candidates is one `Booster.predict` on one thread.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from retrieval.fusion import FEATURES, FusionWeights, fuse
from retrieval.metrics import ndcg_at_k, paired_bootstrap, rank_in_pool

__all__ = [
    "LEARNED_FEATURES",
    "LEARNED_NAME",
    "LearnedFusion",
    "ranking_features",
    "tune_learned_fusion",
]

LEARNED_NAME = "fusion_ltr.txt"
"""The learned fusion model's file, beside `fusion.json`."""

LEARNED_FEATURES = (*FEATURES, *(f"{name}_rank" for name in FEATURES), "history_len")
"""Columns of `ranking_features`."""

_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "lambdarank_truncation_level": 20,
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}


def ranking_features(features: np.ndarray, history_len: int) -> np.ndarray:
    """The learned model's input for one pool: `features` (n, len(FEATURES)) in that order,
    each column's rank in the pool over n (ties in pool order), and log1p(history_len)."""
    features = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    n = len(features)
    ranks = np.empty_like(features)
    if n:
        order = np.argsort(-features, axis=0, kind="stable")
        np.put_along_axis(ranks, order, np.arange(n, dtype=np.float64)[:, None] / n, axis=0)
    hist = np.full((n, 1), np.log1p(max(history_len, 0)))
    return np.hstack([features, ranks, hist])


class LearnedFusion:
    """A LambdaRank booster that scores candidate pools (higher ranks first)."""

    def __init__(self, booster: lgb.Booster) -> None:
        self.booster = booster

    @classmethod
    def train(
        cls,
        pools: Sequence[tuple[np.ndarray, int, int]],
        *,
        valid: Sequence[tuple[np.ndarray, int, int]] = (),
        rounds: int = 300,
        seed: int = 0,
    ) -> LearnedFusion:
        """Fit on `pools`: per user `(features, target row, history length)`.

        With `valid` pools, training stops when their NDCG@10 has not improved
        for 30 rounds and keeps the best round. Raises `ValueError` when no pool
        has a target (nothing to learn from).
        """
        train = _dataset(pools)
        if train is None:
            raise ValueError("no validation pool holds its target: nothing to learn from")
        params = {**_PARAMS, "seed": seed}
        valid_set = _dataset(valid, reference=train)
        callbacks = []
        valid_sets = []
        if valid_set is not None:
            valid_sets = [valid_set]
            callbacks = [lgb.early_stopping(30, verbose=False)]
        booster = lgb.train(
            params, train, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks
        )
        return cls(booster)

    def scores(self, features: np.ndarray, history_len: int) -> np.ndarray:
        """Scores of one pool's candidates (`features` in `FEATURES` order)."""
        x = ranking_features(features, history_len)
        if not len(x):
            return np.zeros(0)
        best = self.booster.best_iteration or None
        return np.asarray(self.booster.predict(x, num_iteration=best, num_threads=1))

    @property
    def rounds(self) -> int:
        return self.booster.best_iteration or self.booster.current_iteration()

    def importance(self) -> dict[str, float]:
        """Each input's share of the total split gain."""
        gain = self.booster.feature_importance("gain")
        total = float(gain.sum()) or 1.0
        return {n: round(float(g) / total, 4) for n, g in zip(LEARNED_FEATURES, gain, strict=True)}

    def save(self, path: Path) -> None:
        """Write the model as LightGBM text, through a temporary file and a rename."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        self.booster.save_model(str(tmp), num_iteration=self.booster.best_iteration or None)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> LearnedFusion:
        """The model saved at `path`; `ValueError` when it was trained on other inputs than
        `LEARNED_FEATURES` (tuned before a feature joined: tune again)."""
        booster = lgb.Booster(model_file=str(path))
        if booster.num_feature() != len(LEARNED_FEATURES):
            raise ValueError(
                f"{path} was trained on {booster.num_feature()} inputs, this version ranks with "
                f"{len(LEARNED_FEATURES)}: run `llmrec eval --tune` again"
            )
        return cls(booster)


def _dataset(
    pools: Sequence[tuple[np.ndarray, int, int]], reference: lgb.Dataset | None = None
) -> lgb.Dataset | None:
    """One query group per pool that holds its target (a group with no positive teaches
    LambdaRank nothing); None when there is none."""
    xs, ys, groups = [], [], []
    for features, target, history_len in pools:
        if target < 0 or not len(features):
            continue
        x = ranking_features(features, history_len)
        y = np.zeros(len(x))
        y[target] = 1.0
        xs.append(x)
        ys.append(y)
        groups.append(len(x))
    if not xs:
        return None
    return lgb.Dataset(
        np.vstack(xs),
        np.concatenate(ys),
        group=groups,
        feature_name=list(LEARNED_FEATURES),
        reference=reference,
        free_raw_data=False,
    )


def _pool_ndcg(scores: np.ndarray, target: int, k: int) -> float:
    """NDCG@k of the target row under `scores` (ties keep pool order, as the router's sort)."""
    return ndcg_at_k(int(rank_in_pool(scores, target)), k) if target >= 0 else 0.0


def tune_learned_fusion(
    pools: Mapping[str, tuple[Sequence[str], np.ndarray]],
    targets: Mapping[str, str],
    history_lens: Mapping[str, int],
    k: int,
    *,
    base: FusionWeights,
    seed: int = 0,
    folds: int = 5,
    min_users: int = 30,
) -> tuple[LearnedFusion | None, dict[str, Any]]:
    """Train the learned fusion on validation pools and keep it only if it earns its place.

    Cross-fitted, so every validation user counts in the decision: the users are split
    (seeded) into `folds` parts, and each part is ranked by a model trained on the other
    parts. Those out-of-fold rankings are compared, paired by user, with the grid's weights
    `base` (tuned on all the pools, which favours them), and the model is returned only
    when the NDCG@k lift has a bootstrap interval above 0: a lift within the noise is no
    reason to leave the weights. The model returned is trained on every pool. Every training
    stops early on a seeded fifth of its own users. The report gives both NDCGs, the lift,
    the rounds and the feature gains; None with the reason when there are fewer than
    `min_users` pools.
    """
    users = sorted(pools)
    if len(users) < min_users:
        return None, {"skipped": f"{len(users)} validation users (at least {min_users} needed)"}
    random.Random(seed).shuffle(users)
    rows = {}
    for user in users:
        item_ids, features = pools[user]
        ids = list(item_ids)
        target = ids.index(targets[user]) if targets[user] in ids else -1
        rows[user] = (np.asarray(features), target, history_lens[user])

    grid_ndcg, learned_ndcg = [], []
    try:
        for fold in range(folds):
            held = users[fold::folds]
            fit = [u for n, u in enumerate(users) if n % folds != fold]
            model = _train_stopped([rows[u] for u in fit], seed)
            for f, t, h in (rows[u] for u in held):
                grid_ndcg.append(_pool_ndcg(fuse(f, base), t, k))
                learned_ndcg.append(_pool_ndcg(model.scores(f, h), t, k))
        model = _train_stopped([rows[u] for u in users], seed)
    except ValueError as exc:
        return None, {"skipped": str(exc)}
    lift = paired_bootstrap(grid_ndcg, learned_ndcg, seed=seed)
    kept = lift["ci"][0] > 0
    report = {
        "users": len(users),
        "folds": folds,
        f"out_of_fold_ndcg_at_{k}": {
            "learned": round(float(np.mean(learned_ndcg)), 6),
            "grid": round(float(np.mean(grid_ndcg)), 6),
        },
        "lift": lift,
        "kept": kept,
        "rounds": model.rounds,
        "gain": model.importance(),
    }
    return (model if kept else None), report


def _train_stopped(rows: Sequence[tuple[np.ndarray, int, int]], seed: int) -> LearnedFusion:
    """A model trained on four fifths of `rows` (seeded), stopping early on the last fifth."""
    order = list(range(len(rows)))
    random.Random(seed + 1).shuffle(order)
    n_stop = max(1, len(rows) // 5)
    stop = [rows[i] for i in order[:n_stop]]
    fit = [rows[i] for i in order[n_stop:]]
    return LearnedFusion.train(fit, valid=stop, seed=seed)
