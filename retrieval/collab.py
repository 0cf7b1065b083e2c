"""Collaborative candidates from the interaction log: item-item kNN, ALS and popularity.

`ItemKNN` keeps, per item, its `top_n` most similar items by cosine over the
user-item matrix (users who took one also took the other); a user's candidates
are the summed similarities of their history's neighbours. Its `popularity`
ranks items by distinct users, for cold users with no history. `AlsModel` is
implicit-feedback matrix factorisation (the `implicit` library's ALS on CPU);
a user's factor is solved from their history at request time, so users unseen
at fit time and request-time histories work the same way. `FactorIndex`
searches ALS's item factors by inner product, so a user's best items are
found without scoring the whole catalog.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

__all__ = ["AlsModel", "FactorIndex", "ItemKNN", "user_item_matrix"]


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
        ui = user_item_matrix(interactions, item_ids)
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

    def scores(self, history: Sequence[str]) -> np.ndarray:
        """Summed neighbour similarity of every catalog item (`item_ids` order) to `history`."""
        positions, values = self.sparse_scores(history)
        out = np.zeros(len(self.item_ids), dtype=np.float32)
        out[positions] = values
        return out

    def sparse_scores(self, history: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`scores(history)` where it can be nonzero: (catalog positions, ascending; float32
        summed similarities), the union of the history items' neighbour lists.

        Each sum is taken in history order in the neighbours' dtype, as a dense sum over the
        history's rows would, so both give the same bits.
        """
        rows = np.fromiter((self.index[i] for i in history if i in self.index), dtype=np.int64)
        # The history rows' entries in order, gathered from the CSR arrays directly
        # (scipy's row indexing builds a new matrix: most of the time for a short history).
        n = self.neighbours
        starts, lengths = n.indptr[rows], n.indptr[rows + 1] - n.indptr[rows]
        ends_before = np.cumsum(lengths) - lengths
        take = np.arange(int(lengths.sum())) + np.repeat(starts - ends_before, lengths)
        positions, slot = np.unique(n.indices[take], return_inverse=True)
        sums = np.zeros(len(positions), dtype=n.data.dtype)
        np.add.at(sums, slot, n.data[take])
        return positions.astype(np.int64), sums.astype(np.float32)

    def recommend(
        self, history: Sequence[str], n: int, exclude: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        """Up to `n` (item_id, score) by summed neighbour similarity, best first."""
        if n <= 0:
            return []
        scores = self.scores(history)
        banned = [self.index[i] for i in exclude if i in self.index]
        scores[banned] = 0.0
        top = np.argsort(-scores, kind="stable")[:n]
        return [(self.item_ids[i], float(scores[i])) for i in top if scores[i] > 0]

    def popularity_feature(self) -> np.ndarray:
        """`log1p(users) / log1p(max users)` per item (`item_ids` order), 0..1."""
        top = float(self.popularity.max()) if len(self.popularity) else 0.0
        if top <= 0:
            return np.zeros(len(self.item_ids), dtype=np.float32)
        return (np.log1p(self.popularity) / np.log1p(top)).astype(np.float32)

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


class AlsModel:
    """Implicit-feedback ALS (`implicit.cpu.als.AlternatingLeastSquares`) over the catalog.

    Only the item factors and the solver settings are kept (`save`/`load` as
    one `.npz`); `scores(history)` solves the user's factor from their history
    as ALS does during training and returns the dot product with every item.
    Fitting (implicit) is seeded. A user's factor is the solution of ALS's normal
    equations, solved here in NumPy (`user_factor`): the same factor as
    implicit's `recalculate_user`, to float32 rounding, without building a
    one-row sparse matrix per request.
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        item_factors: np.ndarray,
        *,
        regularization: float,
        alpha: float,
    ) -> None:
        self.item_ids = list(item_ids)
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        if factors.shape[0] != len(self.item_ids):
            raise ValueError(f"{factors.shape[0]} item factors for {len(self.item_ids)} items")
        self.item_factors = factors
        self.regularization = float(regularization)
        self.alpha = float(alpha)
        # Every user's normal equations start from Y^T Y + regularization * I.
        self._gram = factors.T @ factors + self.regularization * np.eye(
            factors.shape[1], dtype=np.float32
        )

    @classmethod
    def fit(
        cls,
        interactions: pa.Table,
        item_ids: Sequence[str],
        *,
        factors: int = 32,
        regularization: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 15,
        seed: int = 0,
    ) -> AlsModel:
        """Fit on an interactions table (user_id, item_id); every event counts once.

        The defaults did best of a small grid on the demo data's validation split.
        """
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        ui = user_item_matrix(interactions, item_ids)
        # implicit parallelises itself; a multi-threaded BLAS underneath only oversubscribes.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=factors,
                regularization=regularization,
                alpha=alpha,
                iterations=iterations,
                random_state=seed,
            )
            model.fit(ui, show_progress=False)
        return cls(item_ids, model.item_factors, regularization=regularization, alpha=alpha)

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            item_ids=np.asarray(self.item_ids, dtype=object).astype(str),
            item_factors=self.item_factors,
            regularization=np.float64(self.regularization),
            alpha=np.float64(self.alpha),
        )

    @classmethod
    def load(cls, path: Path) -> AlsModel:
        z = np.load(path, allow_pickle=False)
        return cls(
            z["item_ids"].tolist(),
            z["item_factors"],
            regularization=float(z["regularization"]),
            alpha=float(z["alpha"]),
        )

    def scores(self, history: Sequence[str]) -> np.ndarray:
        """ALS score of every catalog item (`item_ids` order) for a user with `history`."""
        user = self.user_factor(history)
        if user is None:
            return np.zeros(len(self.item_ids), dtype=np.float32)
        return (self.item_factors @ user).astype(np.float32)

    def user_factor(self, history: Sequence[str]) -> np.ndarray | None:
        """The factor (float32) ALS solves for a user with `history`; None when the model
        knows none of its items. An item's score is its factor dotted with this one."""
        cols = sorted({self.index[i] for i in history if i in self.index})
        if not cols:
            return None
        # Each history item counts once with confidence alpha, every other item with
        # confidence 1 and preference 0: (Y^T C Y + reg I) x = Y^T C p, where
        # Y^T C Y = Y^T Y + (alpha - 1) Yh^T Yh over the history's rows Yh.
        taken = self.item_factors[cols]
        lhs = self._gram + (self.alpha - 1.0) * (taken.T @ taken)
        rhs = self.alpha * taken.sum(axis=0)
        return np.linalg.solve(lhs, rhs).astype(np.float32)

    def recommend(
        self, history: Sequence[str], n: int, exclude: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        """Up to `n` (item_id, score) with a positive ALS score, best first."""
        if n <= 0:
            return []
        scores = self.scores(history)
        scores[[self.index[i] for i in exclude if i in self.index]] = 0.0
        top = np.argsort(-scores, kind="stable")[:n]
        return [(self.item_ids[i], float(scores[i])) for i in top if scores[i] > 0]


class FactorIndex:
    """Maximum inner product search over item factors (row i: catalog position i).

    Only the rows with a nonzero factor are indexed (ALS leaves the factor of an
    item nobody took at 0, and a zero row scores 0 for every user, so it is never a
    best item). Up to `exact_max_items` of them the search is exact (a flat
    inner-product index); above, an HNSW graph over inner product (`hnsw_m` links
    per row) answers approximately: `ef_search` (at least the `k` asked for) trades
    recall for time. The graph is built here, on every core FAISS uses, and holds
    about `8 * hnsw_m` bytes a row beside its copy of the factors.
    """

    def __init__(
        self,
        factors: np.ndarray,
        *,
        exact_max_items: int = 200_000,
        hnsw_m: int = 32,
        ef_search: int = 128,
    ) -> None:
        factors = np.ascontiguousarray(factors, dtype=np.float32)
        self.positions = np.flatnonzero(np.any(factors != 0, axis=1))
        """Catalog position of each indexed row."""
        self.exact = len(self.positions) <= exact_max_items
        self.ef_search = ef_search
        dim = factors.shape[1]
        if self.exact:
            self._index: faiss.Index = faiss.IndexFlatIP(dim)
        else:
            self._index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        self._index.add(factors[self.positions])

    def __len__(self) -> int:
        return len(self.positions)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to `k` (catalog positions, int64; inner products, float32) best first."""
        k = min(k, len(self.positions))
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        params = None if self.exact else faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        scores, rows = self._index.search(query.reshape(1, -1).astype(np.float32), k, params=params)
        found = rows[0] >= 0
        return self.positions[rows[0][found]], scores[0][found]


def user_item_matrix(interactions: pa.Table, item_ids: Sequence[str]) -> sp.csr_matrix:
    """Binary users × items CSR matrix from (user_id, item_id) rows; unknown items dropped.

    Users are numbered in sorted id order, so the same rows in any order give
    the same matrix (and a seeded ALS fit on it the same factors).
    """
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    users = interactions["user_id"].to_pylist()
    items = interactions["item_id"].to_pylist()
    user_index = {u: n for n, u in enumerate(sorted(set(users)))}
    rows, cols = [], []
    for u, i in zip(users, items, strict=True):
        if i in index:
            rows.append(user_index[u])
            cols.append(index[i])
    ui = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)),
        shape=(max(len(user_index), 1), len(item_ids)),
    )
    ui.data[:] = 1.0  # repeated events count once
    return ui


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
