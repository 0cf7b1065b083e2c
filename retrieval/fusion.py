"""Score fusion of the candidate sources, and the tuned weights saved beside an index.

Every candidate carries six features, each comparable across users:

- `ann`: cosine between the user profile (the recency-weighted mean of the
  history's item vectors) and the item (−1..1),
- `item_knn`: item-kNN score divided by the user's best item-kNN score (0..1),
- `als`: ALS score clipped at 0, divided by the user's best ALS score (0..1),
- `popularity`: `log1p(users) / log1p(max users)` over the catalog (0..1),
- `ease`: EASE score of the recency-weighted history clipped at 0, divided by
  the user's best EASE score (0..1),
- `sequential`: the sequential model's next-item probability divided by that
  of its favourite unseen item (0..1).

The fused score is their weighted sum; only ratios between weights change the
order. `llmrec eval --tune` picks the weights and the profile's half-life on a
validation split and writes them to `index/fusion.json` with the LLM's share of
the rerank blend; the
router reads that file at start (see `RouterConfig.use_tuned_fusion`).

`--tune` also trains a learned fusion (`retrieval.ltr`, LambdaRank over the
same features) and keeps it, as `index/fusion_ltr.txt` beside the weights,
when its NDCG lift over the weights on held-out validation users has a
bootstrap interval above 0. History
requests are then ordered by it; the weights stay the fallback, and the base
of the query fusion (a stated query re-weights the cosine, which a model
trained on history requests has not seen).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.config import RouterConfig

if TYPE_CHECKING:
    from retrieval.ltr import LearnedFusion

__all__ = ["FEATURES", "FUSION_NAME", "FusionWeights", "fuse", "load_fusion", "save_fusion"]

FUSION_NAME = "fusion.json"
FEATURES = ("ann", "item_knn", "als", "popularity", "ease", "sequential")
"""Column order of candidate feature matrices."""


_CONFIG_FIELDS = {
    "ann": "ann_weight",
    "item_knn": "cf_weight",
    "als": "als_weight",
    "popularity": "popularity_weight",
    "ease": "ease_weight",
    "sequential": "sequential_weight",
}
"""Each feature weight's `RouterConfig` field."""


def _router_default(feature: str) -> float:
    return RouterConfig.model_fields[_CONFIG_FIELDS[feature]].default


@dataclass(frozen=True)
class FusionWeights:
    """Weights of the features, plus the LLM share of the rerank blend.

    The defaults are `RouterConfig`'s (`ann_weight`, `cf_weight`, `als_weight`,
    `popularity_weight`, `ease_weight`, `sequential_weight`); `from_config` takes a
    config's values.

    `rerank` is `None` when the reranker's own `rerank_weight` applies; 0
    means the LLM cannot change the order, so the router skips the call.
    `profile_half_life` is the half-life (in interactions) of the profile whose
    cosine is the `ann` feature, tuned with the weights; `None` means the
    config's `router.history_half_life`.
    `tuned` records how the weights were chosen (split, users, NDCG), if they were.
    `learned`, when set, orders history requests in their place (`score`); it is
    saved in its own file beside the weights (`save_fusion`).
    """

    ann: float = _router_default("ann")
    item_knn: float = _router_default("item_knn")
    als: float = _router_default("als")
    popularity: float = _router_default("popularity")
    ease: float = _router_default("ease")
    sequential: float = _router_default("sequential")
    rerank: float | None = None
    profile_half_life: float | None = None
    tuned: dict[str, Any] = field(default_factory=dict, compare=False)
    learned: LearnedFusion | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in FEATURES:
            if getattr(self, name) < 0:
                raise ValueError(f"fusion weight {name} must be >= 0")
        if self.rerank is not None and not 0.0 <= self.rerank <= 1.0:
            raise ValueError("fusion weight rerank must be in 0..1")
        if self.profile_half_life is not None and not self.profile_half_life > 0:
            raise ValueError("fusion profile_half_life must be > 0")

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
        """The weights as JSON; `learned` is named by its file (`LEARNED_NAME`), or null."""
        from retrieval.ltr import LEARNED_NAME

        out = asdict(replace(self, learned=None))
        out["learned"] = LEARNED_NAME if self.learned is not None else None
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FusionWeights:
        """The weights of `to_json`'s output; a `learned` model is attached by `load_fusion`."""
        raw = {k: v for k, v in raw.items() if k != "learned"}
        known = {f.name for f in fields(cls)} - {"learned"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown fusion fields {sorted(unknown)}")
        # Weights tuned before a feature existed give it none: their ratios stay as tuned.
        return cls(**{**dict.fromkeys(FEATURES, 0.0), **raw})

    def score(self, features: np.ndarray, history_len: int) -> np.ndarray:
        """Scores of one request's candidates: the learned model's when there is one,
        else the weighted sum (`fuse`)."""
        if self.learned is not None:
            return self.learned.scores(features, history_len)
        return fuse(features, self)


def fuse(features: np.ndarray, weights: FusionWeights) -> np.ndarray:
    """Fused scores of candidates, `features` of shape `(n, len(FEATURES))` in that order."""
    features = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    return features @ weights.vector


def save_fusion(path: Path, weights: FusionWeights) -> Path:
    """Write `weights` as JSON to `path` atomically (a temporary file, then a rename), and
    its learned model beside it; a learned model left from an earlier tuning is removed."""
    from retrieval.ltr import LEARNED_NAME

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_path = path.with_name(LEARNED_NAME)
    if weights.learned is not None:
        weights.learned.save(model_path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(weights.to_json(), indent=2))
    os.replace(tmp, path)
    if weights.learned is None:
        model_path.unlink(missing_ok=True)
    return path


def load_fusion(index_dir: Path) -> FusionWeights | None:
    """`index_dir/fusion.json` with its learned model if it names one, or None when the
    file does not exist.

    Raises `ValueError` naming the file when it is malformed or its model is missing.
    """
    from retrieval.ltr import LearnedFusion

    path = Path(index_dir) / FUSION_NAME
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        weights = FusionWeights.from_json(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: malformed fusion weights ({exc})") from exc
    if raw.get("learned"):
        model_path = path.with_name(str(raw["learned"]))
        if not model_path.exists():
            raise ValueError(f"{path} names a learned fusion {model_path} that does not exist")
        weights = replace(weights, learned=LearnedFusion.load(model_path))
    return weights
