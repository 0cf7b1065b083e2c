"""User profiles: one vector from a history (and optionally a query)."""

from __future__ import annotations

import numpy as np

__all__ = ["blend_query", "histories_from_log", "recency_weights", "user_profile"]


def recency_weights(n: int, half_life: float) -> np.ndarray:
    """Weights for `n` interactions ordered oldest→newest; the newest weighs 1 and
    one `half_life` steps back weighs 0.5."""
    age = np.arange(n - 1, -1, -1, dtype=np.float64)
    return np.power(0.5, age / half_life)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > 0 else v.astype(np.float32)


def user_profile(history_vectors: np.ndarray, half_life: float) -> np.ndarray:
    """Recency-weighted mean of unit history vectors (rows oldest→newest), re-normalised."""
    if len(history_vectors) == 0:
        raise ValueError("empty history")
    w = recency_weights(len(history_vectors), half_life)
    return _unit((w[:, None] * history_vectors).sum(axis=0))


def blend_query(profile: np.ndarray | None, query: np.ndarray | None, query_weight: float):
    """Blend a history profile with an encoded query; either may be missing (not both)."""
    if profile is None and query is None:
        raise ValueError("need a profile or a query")
    if profile is None:
        return _unit(query)
    if query is None:
        return _unit(profile)
    return _unit(query_weight * query + (1.0 - query_weight) * profile)


def histories_from_log(
    user_ids: list[str], item_ids: list[str], ts: list[int]
) -> dict[str, list[str]]:
    """Each user's items oldest→newest (ties keep log order), from interaction columns."""
    order = sorted(range(len(user_ids)), key=lambda r: (user_ids[r], ts[r]))
    histories: dict[str, list[str]] = {}
    for r in order:
        histories.setdefault(user_ids[r], []).append(item_ids[r])
    return histories
