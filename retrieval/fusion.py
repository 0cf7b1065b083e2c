"""Score fusion of the candidate sources, and the tuned weights saved beside an index.

Every candidate carries five features, each comparable across users:

- `ann`: cosine between the user profile and the item (−1..1),
- `item_knn`: item-kNN score divided by the user's best item-kNN score (0..1),
- `als`: ALS score clipped at 0, divided by the user's best ALS score (0..1),
- `popularity`: `log1p(users) / log1p(max users)` over the catalog (0..1),
- `ease`: EASE score of the recency-weighted history clipped at 0, divided by
  the user's best EASE score (0..1).

The fused score is their weighted sum; only ratios between weights change the
order. `llmrec eval --tune` picks the weights on a validation split and writes
them to `index/fusion.json` with the LLM's share of the rerank blend; the
router reads that file at start (see `RouterConfig.use_tuned_fusion`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import RouterConfig

__all__ = ["FEATURES", "FUSION_NAME", "FusionWeights", "fuse", "load_fusion", "save_fusion"]

FUSION_NAME = "fusion.json"
FEATURES = ("ann", "item_knn", "als", "popularity", "ease")
"""Column order of candidate feature matrices."""


_CONFIG_FIELDS = {
    "ann": "ann_weight",
    "item_knn": "cf_weight",
    "als": "als_weight",
    "popularity": "popularity_weight",
    "ease": "ease_weight",
}
"""Each feature weight's `RouterConfig` field."""


def _router_default(feature: str) -> float:
    return RouterConfig.model_fields[_CONFIG_FIELDS[feature]].default


@dataclass(frozen=True)
class FusionWeights:
    """Weights of the features, plus the LLM share of the rerank blend.

    The defaults are `RouterConfig`'s (`ann_weight`, `cf_weight`, `als_weight`,
    `popularity_weight`, `ease_weight`); `from_config` takes a config's values.

    `rerank` is `None` when the reranker's own `rerank_weight` applies; 0
    means the LLM cannot change the order, so the router skips the call.
    `tuned` records how the weights were chosen (split, users, NDCG), if they were.
    """

    ann: float = _router_default("ann")
    item_knn: float = _router_default("item_knn")
    als: float = _router_default("als")
    popularity: float = _router_default("popularity")
    ease: float = _router_default("ease")
    rerank: float | None = None
    tuned: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in FEATURES:
            if getattr(self, name) < 0:
                raise ValueError(f"fusion weight {name} must be >= 0")
        if self.rerank is not None and not 0.0 <= self.rerank <= 1.0:
            raise ValueError("fusion weight rerank must be in 0..1")

    @property
    def vector(self) -> np.ndarray:
        """The feature weights in `FEATURES` order."""
        return np.asarray([getattr(self, name) for name in FEATURES], dtype=np.float64)

    def with_features(self, vector: np.ndarray | list[float]) -> FusionWeights:
        """A copy with the feature weights replaced (same order as `FEATURES`)."""
        return replace(self, **{n: float(v) for n, v in zip(FEATURES, vector, strict=True)})

    @classmethod
    def from_config(cls, router: RouterConfig) -> FusionWeights:
        """The weights a router config names (used when no `fusion.json` is given)."""
        return cls(**{feature: getattr(router, name) for feature, name in _CONFIG_FIELDS.items()})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FusionWeights:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown fusion fields {sorted(unknown)}")
        # Weights tuned before a feature existed give it none: their ratios stay as tuned.
        return cls(**{**dict.fromkeys(FEATURES, 0.0), **raw})


def fuse(features: np.ndarray, weights: FusionWeights) -> np.ndarray:
    """Fused scores of candidates, `features` of shape `(n, len(FEATURES))` in that order."""
    features = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    return features @ weights.vector


def save_fusion(path: Path, weights: FusionWeights) -> Path:
    """Write `weights` as JSON to `path` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(weights.to_json(), indent=2))
    os.replace(tmp, path)
    return path


def load_fusion(index_dir: Path) -> FusionWeights | None:
    """`index_dir/fusion.json`, or None when it does not exist.

    Raises `ValueError` naming the file when it is malformed.
    """
    path = Path(index_dir) / FUSION_NAME
    if not path.exists():
        return None
    try:
        return FusionWeights.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: malformed fusion weights ({exc})") from exc
