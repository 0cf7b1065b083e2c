"""Collaborative candidates from the interaction log: item-item kNN and popularity.

`ItemKNN` keeps, per item, its `top_n` most similar items by cosine over the
user-item matrix (users who took one also took the other); a user's candidates
are the summed similarities of their history's neighbours. `popularity` ranks
items by distinct users, for cold users with no history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

__all__ = ["ItemKNN"]


class ItemKNN:
    """Item-item cosine neighbours plus a popularity ranking, saved as one `.npz`."""

    def __init__(
        self, item_ids: Sequence[str], neighbours: sp.csr_matrix, popularity: np.ndarray
    ) -> None:
        self.item_ids = list(item_ids)
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.neighbours = neighbours.tocsr()
        self.popularity = np.asarray(popularity, dtype=np.float32)
        self._by_popularity = np.argsort(-self.popularity, kind="stable")

    @classmethod
    def fit(cls, interactions: pa.Table, item_ids: Sequence[str], top_n: int = 50) -> ItemKNN:
        """Fit from an interactions table (user_id, item_id) over the catalog's `item_ids`."""
        index = {item_id: i for i, item_id in enumerate(item_ids)}
        users = interactions["user_id"].to_pylist()
        items = interactions["item_id"].to_pylist()
        user_index: dict[str, int] = {}
        rows, cols = [], []
        for u, i in zip(users, items, strict=True):
            if i in index:
                rows.append(user_index.setdefault(u, len(user_index)))
                cols.append(index[i])
        ui = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)),
            shape=(max(len(user_index), 1), len(item_ids)),
        )
        ui.data[:] = 1.0  # repeated events count once
        popularity = np.asarray(ui.sum(axis=0)).ravel()
        norms = np.sqrt(np.maximum(popularity, 1.0))
        iu = sp.csr_matrix(ui.T.multiply(1.0 / norms[:, None]))
        sim = (iu @ iu.T).tocsr()
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        return cls(item_ids, _keep_top_n(sim, top_n), popularity)

    def save(self, path: Path) -> None:
        n = self.neighbours
        np.savez_compressed(
            path,
            item_ids=np.asarray(self.item_ids, dtype=object).astype(str),
            data=n.data,
            indices=n.indices,
            indptr=n.indptr,
            shape=np.asarray(n.shape),
            popularity=self.popularity,
        )

    @classmethod
    def load(cls, path: Path) -> ItemKNN:
        z = np.load(path, allow_pickle=False)
        neighbours = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        return cls(z["item_ids"].tolist(), neighbours, z["popularity"])

    def recommend(
        self, history: Sequence[str], n: int, exclude: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        """Up to `n` (item_id, score) by summed neighbour similarity, best first."""
        rows = [self.index[i] for i in history if i in self.index]
        if not rows or n <= 0:
            return []
        scores = np.asarray(self.neighbours[rows].sum(axis=0)).ravel()
        banned = [self.index[i] for i in exclude if i in self.index]
        scores[banned] = 0.0
        top = np.argsort(-scores, kind="stable")[:n]
        return [(self.item_ids[i], float(scores[i])) for i in top if scores[i] > 0]

    def most_popular(self, n: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Up to `n` (item_id, distinct users) most popular items, best first."""
        banned = set(exclude)
        out = []
        for i in self._by_popularity:
            if self.item_ids[i] not in banned:
                out.append((self.item_ids[i], float(self.popularity[i])))
                if len(out) == n:
                    break
        return out


def _keep_top_n(sim: sp.csr_matrix, top_n: int) -> sp.csr_matrix:
    data, indices, indptr = [], [], [0]
    for r in range(sim.shape[0]):
        start, end = sim.indptr[r], sim.indptr[r + 1]
        vals, cols = sim.data[start:end], sim.indices[start:end]
        if len(vals) > top_n:
            keep = np.argpartition(-vals, top_n)[:top_n]
            vals, cols = vals[keep], cols[keep]
        data.append(vals)
        indices.append(cols)
        indptr.append(indptr[-1] + len(vals))
    return sp.csr_matrix(
        (np.concatenate(data) if data else [], np.concatenate(indices) if indices else [], indptr),
        shape=sim.shape,
    )
