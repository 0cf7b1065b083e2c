"""One user's normalised collaborative scores, without an array the length of the catalog.

The router fuses item-kNN, ALS and EASE as features of its candidates. Each
model's scores for a history are clipped at 0, the items the user has seen
set to 0, and the rest divided by the user's best unseen score, so 1.0 is the
model's favourite; its proposals (`top`) are its best unseen items with a
positive score, ties by catalog position. A `UserScores` holds that for one
model and one request, in what the history touches:

- item-kNN and EASE as a sparse vector (`SparseScores`): the catalog positions
  where the score can be nonzero (the history's neighbour lists; EASE's
  modelled items) and the normalised values there;
- ALS as the user's factor (`FactorScores`): its proposals come from a
  `FactorIndex` search, and only the items asked about are scored;
- the sequential model over the whole catalog (`SparseScores` at every
  position): its next-item logits as `exp(logit - best unseen logit)`, the
  softmax probability relative to its favourite, so 1.0 is the favourite and
  every score is above 0.

The numbers are those of the dense computation over every catalog item
(`ItemKNN.scores`, `EaseModel.scores`, `AlsModel.scores`): bit for bit for
item-kNN and EASE, to float32 rounding for ALS (its dot products run in other
kernels). With an approximate `FactorIndex` the ALS proposals may miss some of
the exact best, and the best unseen score is the best one found.

The models of one build are fit over the same catalog order: `share_catalog`
gives them one `item_ids` list and one `index`, so a request looks its seen
items and its pool up once (`Positioned`) for every model, not once per model.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from retrieval.collab import AlsModel, FactorIndex, ItemKNN
from retrieval.ease import EaseModel
from retrieval.sequential import SequentialModel

__all__ = [
    "FactorScores",
    "Positioned",
    "SparseScores",
    "UserScores",
    "als_scores",
    "ease_scores",
    "item_knn_scores",
    "positions_of",
    "sequential_scores",
    "share_catalog",
    "top_positions",
]

_SEARCH_SLACK = 10
"""Results an ALS search asks for beyond those it needs: the index's inner products may
differ from the rescored ones in the last bits, which must not decide the last places."""


class UserScores(Protocol):
    """A model's normalised scores for one user (see the module docstring)."""

    top: list[str]
    """The model's proposals: up to its candidate count of unseen item ids, best first."""

    def of(self, item_ids: Ids) -> np.ndarray:
        """The normalised score (float32, 0..1) of each of `item_ids`: 0 for ids the model
        does not know, for seen items and for items it scores at most 0."""
        ...


@dataclass(frozen=True)
class Positioned:
    """Item ids with their positions in `index`, looked up once for every model whose `index`
    is that very dict (`share_catalog`). A model with another index looks the ids up itself."""

    index: Mapping[str, int]
    ids: Sequence[str]
    positions: np.ndarray

    @classmethod
    def of(cls, index: Mapping[str, int], ids: Sequence[str]) -> Positioned:
        return cls(index, ids, positions_of(index, ids))


Ids = Sequence[str] | Positioned
"""Item ids, or item ids already looked up in a catalog index."""


def positions_of(index: Mapping[str, int], item_ids: Ids) -> np.ndarray:
    """The positions of `item_ids` in `index`, -1 for ids it does not know (not looked up
    again when they are `Positioned` in this very `index`)."""
    if isinstance(item_ids, Positioned):
        if item_ids.index is index:
            return item_ids.positions
        item_ids = item_ids.ids
    # map() over dict.get: no Python frame per id (a heavy user's history is thousands).
    found = map(index.get, item_ids, itertools.repeat(-1))
    return np.fromiter(found, dtype=np.int64, count=len(item_ids))


class _Catalogued(Protocol):
    item_ids: list[str]
    index: dict[str, int]


def share_catalog(*models: _Catalogued | None) -> None:
    """Give models fit over the same catalog order one `item_ids` list and one `index` dict
    (the first model's): one copy in memory instead of one per model (a million-item
    catalog's ids and index are hundreds of MB), and `Positioned` lookups shared by all."""
    present = [m for m in models if m is not None]
    for n, model in enumerate(present):
        same = next((m for m in present[:n] if m.item_ids == model.item_ids), None)
        if same is not None:
            model.item_ids, model.index = same.item_ids, same.index


def _find(ascending: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `positions`: its slot in the `ascending` positions, and whether it is
    there (the slot is only meaningful where it is)."""
    if not len(ascending):
        return np.zeros(len(positions), dtype=np.int64), np.zeros(len(positions), dtype=bool)
    slot = np.minimum(np.searchsorted(ascending, positions), len(ascending) - 1)
    return slot, ascending[slot] == positions


def top_positions(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the `n` highest scores, best first (ties by position), without a full sort."""
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if n < len(scores):
        part = np.argpartition(-scores, n - 1)[:n]
        # argpartition leaves ties at the cut arbitrary: take every score equal to the n-th.
        cut = scores[part].min()
        part = np.flatnonzero(scores >= cut)
    else:
        part = np.arange(len(scores))
    order = np.lexsort((part, -scores[part]))
    return part[order][:n]


@dataclass(frozen=True)
class SparseScores:
    """Normalised scores at `positions` (catalog positions, ascending), 0 everywhere else."""

    index: Mapping[str, int]
    positions: np.ndarray
    values: np.ndarray
    top: list[str]

    @classmethod
    def normalise(
        cls,
        item_ids: Sequence[str],
        index: Mapping[str, int],
        positions: np.ndarray,
        raw: np.ndarray,
        seen: Ids,
        n: int,
    ) -> SparseScores | None:
        """`raw` (the scores at ascending `positions`) clipped at 0, `seen` set to 0, divided
        by the best, with the `n` best as `top`; None when no unseen score is positive."""
        scores = np.maximum(raw, 0.0)
        slot, stored = _find(positions, positions_of(index, seen))
        scores[slot[stored]] = 0.0
        best = float(scores.max()) if len(scores) else 0.0
        if best <= 0:
            return None
        scores = scores / best
        top = [item_ids[positions[i]] for i in top_positions(scores, n) if scores[i] > 0]
        return cls(index, positions, scores, top)

    def of(self, item_ids: Ids) -> np.ndarray:
        slot, stored = _find(self.positions, positions_of(self.index, item_ids))
        return np.where(stored, self.values[slot], 0.0).astype(np.float32)


@dataclass(frozen=True)
class FactorScores:
    """ALS scores of one user: the user's factor dotted with an item's, clipped at 0 and
    divided by `best` (at most 1: an approximate search may have missed a better item)."""

    model: AlsModel
    user: np.ndarray
    best: float
    seen: np.ndarray
    """Catalog positions of the seen items, sorted."""
    top: list[str]

    def of(self, item_ids: Ids) -> np.ndarray:
        pos = positions_of(self.model.index, item_ids)
        raw = self.model.item_factors[np.maximum(pos, 0)] @ self.user
        scores = np.minimum(np.maximum(raw, 0.0) / self.best, 1.0)
        scores[(pos < 0) | _find(self.seen, pos)[1]] = 0.0
        return scores.astype(np.float32)


def item_knn_scores(
    model: ItemKNN, history: Sequence[str], seen: Ids, n: int
) -> SparseScores | None:
    """Item-kNN's normalised scores for `history`, over its neighbour lists; None when no
    unseen item scores above 0."""
    positions, raw = model.sparse_scores(history)
    return SparseScores.normalise(model.item_ids, model.index, positions, raw, seen, n)


def ease_scores(
    model: EaseModel,
    history: Sequence[str],
    weights: Sequence[float],
    seen: Ids,
    n: int,
) -> SparseScores | None:
    """EASE's normalised scores for `history` weighted by `weights` (one per entry), over
    the modelled items; None when no unseen item scores above 0."""
    positions, raw = model.sparse_scores(history, weights)
    return SparseScores.normalise(model.item_ids, model.index, positions, raw, seen, n)


def als_scores(
    model: AlsModel, index: FactorIndex, history: Sequence[str], seen: Ids, n: int
) -> FactorScores | None:
    """ALS's normalised scores for `history`, its `n` proposals from `index` (over
    `model`'s item factors); None when the model knows no history item or the search
    finds no unseen item scoring above 0."""
    user = model.user_factor(history)
    if user is None:
        return None
    seen_pos = positions_of(model.index, seen)
    seen_pos = np.unique(seen_pos[seen_pos >= 0])
    # The seen items may be among the best: ask past them, so that n unseen remain (and
    # at least one, for the best score, when no proposals are wanted).
    positions, _ = index.search(user, max(n, 1) + len(seen_pos) + _SEARCH_SLACK)
    raw = model.item_factors[positions] @ user  # scored as `of` scores them
    keep = (raw > 0) & ~_find(seen_pos, positions)[1]
    positions, raw = positions[keep], raw[keep]
    if not len(raw):
        return None
    order = np.lexsort((positions, -raw))[:n]
    top = [model.item_ids[p] for p in positions[order]]
    return FactorScores(model, user, float(raw.max()), seen_pos, top)


def sequential_scores(
    model: SequentialModel, history: Sequence[str], seen: Ids, n: int
) -> SparseScores | None:
    """The sequential model's next-item scores after `history` (oldest first), relative to
    its best unseen item; None when it knows no history item."""
    if not any(i in model.index for i in history):
        return None
    logits = model.scores(history).astype(np.float64)
    raw = np.exp(logits - logits.max())
    positions = np.arange(len(model.item_ids))
    return SparseScores.normalise(model.item_ids, model.index, positions, raw, seen, n)
