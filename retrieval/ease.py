"""EASE: a closed-form item-item model of the interaction log (Steck 2019).

"Embarrassingly Shallow Autoencoders for Sparse Data": with X the binary
users × items matrix and P = (XᵀX + λI)⁻¹, the item-item weights are
B = I − P·diag(1/diag(P)), whose diagonal is zero (an item never predicts
itself). A user's scores are their history's rows of B summed, optionally
weighted (`recency_weights` favours the latest interactions).

The gram matrix XᵀX is dense, so only the `max_items` items with the most
distinct users are modelled; every other item scores 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.linalg

from retrieval.collab import user_item_matrix
from retrieval.profiles import recency_weights

__all__ = ["EaseModel", "recency_weights"]

logger = logging.getLogger(__name__)

# Up to this many items the inverse is taken in float64 (512 MB at 8k items): the
# condition number of XᵀX + λI is about (largest eigenvalue + λ) / λ, in the thousands
# for a log of many users, and an inverse loses that many of float32's 7 digits.
# Above it, float32 halves the fit's memory, which is what bounds the items EASE models.
_FLOAT64_MAX_ITEMS = 8_000


class EaseModel:
    """EASE item-item weights over the catalog's most popular items, saved as one `.npz`.

    `item_ids` is the whole catalog (the order of `scores`); `kept` holds the
    catalog positions of the modelled items, ascending, and `weights` their B
    (float32, `len(kept)` square, zero diagonal). Items outside `kept` score 0.
    """

    def __init__(self, item_ids: Sequence[str], kept: np.ndarray, weights: np.ndarray) -> None:
        self.item_ids = list(item_ids)
        self.kept = np.asarray(kept, dtype=np.int64)
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        if self.weights.shape != (len(self.kept), len(self.kept)):
            raise ValueError(f"weights {self.weights.shape} for {len(self.kept)} kept items")
        if np.any(np.diff(self.kept) <= 0):
            raise ValueError("kept positions must be ascending and distinct")
        self.position = {self.item_ids[c]: p for p, c in enumerate(self.kept.tolist())}
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        """Catalog position of every item: where it is in `scores`."""

    @classmethod
    def fit(
        cls,
        log: pa.Table,
        item_ids: Sequence[str],
        lam: float = 200.0,
        max_items: int = 20_000,
    ) -> EaseModel:
        """Fit on an interactions table (user_id, item_id); repeated events count once.

        Only the `max_items` items with the most distinct users (ties: catalog
        order; items nobody took are never kept) are modelled. B is dense:
        `max_items`² × 4 bytes of float32, 1.6 GB at 20k items, 36 MB at 3k; the
        fit needs a few times that while it runs (the co-occurrence counts, then
        the gram inverted in place, in float64 up to 8k items). `lam` (λ > 0) is
        the L2 penalty; a larger one shrinks every weight towards 0.
        """
        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        t = time.perf_counter()
        ui = user_item_matrix(log, item_ids)
        users = np.asarray(ui.sum(axis=0)).ravel()
        by_users = np.argsort(-users, kind="stable")
        kept = np.sort(by_users[: min(max_items, int((users > 0).sum()))])
        n = len(kept)
        dtype = np.float64 if n <= _FLOAT64_MAX_ITEMS else np.float32
        x = ui[:, kept].astype(dtype)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices(n)] += lam
        # In place: the gram is symmetric, so its transpose is the same matrix in the
        # Fortran order LAPACK overwrites; P is symmetric too, so `.T` is P in C order.
        p = scipy.linalg.inv(gram.T, overwrite_a=True, check_finite=False).T if n else gram
        b = np.divide(p, -np.diag(p)[None, :], out=p)  # B = I − P·diag(1/diag(P))
        b[np.diag_indices(n)] = 0.0
        model = cls(item_ids, kept, b)
        logger.info(
            "EASE fit: %d of %d items (max_items %d) from %d users, λ=%g, %s inverse, "
            "B %.1f MB, %.1f s",
            n,
            len(item_ids),
            max_items,
            ui.shape[0] if len(log) else 0,
            lam,
            np.dtype(dtype).name,
            model.weights.nbytes / 1e6,
            time.perf_counter() - t,
        )
        return model

    def save(self, path: Path) -> None:
        np.savez(
            path,
            item_ids=np.asarray(self.item_ids, dtype=object).astype(str),
            kept=self.kept,
            weights=self.weights,
        )

    @classmethod
    def load(cls, path: Path) -> EaseModel:
        z = np.load(path, allow_pickle=False)
        return cls(z["item_ids"].tolist(), z["kept"], z["weights"])

    def scores(self, history: Sequence[str], weights: Sequence[float] | None = None) -> np.ndarray:
        """EASE score of every catalog item (`item_ids` order) for `history`.

        The sum of the history items' rows of B, each times its entry of
        `weights` (one per history entry; default all 1). Ids outside the
        model are ignored; an item repeated in the history counts once, with
        its largest weight (training counts repeated events once too).
        """
        positions, values = self.sparse_scores(history, weights)
        out = np.zeros(len(self.item_ids), dtype=np.float32)
        out[positions] = values
        return out

    def sparse_scores(
        self, history: Sequence[str], weights: Sequence[float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`scores(history, weights)` at the modelled items only, every other item's being 0:
        (catalog positions, ascending: `kept`; float32 scores), empty when no history item
        is modelled."""
        if weights is not None and len(weights) != len(history):
            raise ValueError(f"{len(weights)} weights for a history of {len(history)}")
        w = np.ones(len(history)) if weights is None else np.asarray(weights, np.float64)
        by_row: dict[int, float] = {}
        for item_id, weight in zip(history, w.tolist(), strict=True):
            row = self.position.get(item_id)
            if row is not None:
                by_row[row] = max(weight, by_row.get(row, weight))
        if not by_row:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        rows = np.fromiter(by_row, dtype=np.int64, count=len(by_row))
        coef = np.fromiter(by_row.values(), dtype=np.float32, count=len(by_row))
        return self.kept, coef @ self.weights[rows]
