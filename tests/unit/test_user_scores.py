"""The router's collaborative scores, kept to what a history touches, against dense scoring.

The reference scores every catalog item with the models' dense `scores`, clips
at 0, zeroes the seen items, divides by the best and takes the best unseen by a
stable full sort: what the router computed before it kept scores sparse.
"""

import numpy as np
import pyarrow as pa
import pytest

from deployments.router.core import RouterCore
from deployments.router.schemas import RecommendRequest
from retrieval.collab import AlsModel, FactorIndex, ItemKNN
from retrieval.config import AppConfig, RouterConfig
from retrieval.ease import EaseModel
from retrieval.fusion import FEATURES
from retrieval.profiles import recency_weights
from retrieval.shards import Shard
from retrieval.user_scores import Positioned, positions_of, share_catalog
from tests.factories import make_shards


class LocalShard:
    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    async def search_ids(self, vector, k, exclude, categories, also, rows_for=0):
        return self.shard.find(
            vector, k, exclude=exclude, categories=categories, also=also, rows_for=rows_for
        )

    async def lookup(self, item_ids):
        return self.shard.lookup(item_ids)


def make_log(item_ids: list[str], n_users: int, per_user: int, seed: int = 0) -> pa.Table:
    """Users taking `per_user` items each, the first items more often (seeded)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(item_ids) + 1) ** 0.7
    users, items = [], []
    for u in range(n_users):
        picks = rng.choice(len(item_ids), per_user, replace=False, p=weights / weights.sum())
        users += [f"u{u}"] * per_user
        items += [item_ids[i] for i in picks]
    return pa.table({"user_id": users, "item_id": items})


def make_core(cf=None, als=None, ease=None, shards=(), **router) -> RouterCore:
    async def no_encoder(text: str) -> np.ndarray:
        raise AssertionError("not used")

    return RouterCore(
        AppConfig(router=RouterConfig(**router)),
        encode=no_encoder,
        shards=[LocalShard(s) for s in shards] or [object()],
        cf=cf,
        als=als,
        ease=ease,
    )


def dense_reference(dense: np.ndarray, item_ids: list[str], seen: list[str], n: int):
    """(top ids, normalised scores of every item) as dense scoring gives them; None when no
    unseen item scores above 0."""
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    scores = np.maximum(dense, 0.0)
    scores[[index[i] for i in seen if i in index]] = 0.0
    best = float(scores.max())
    if best <= 0:
        return None
    scores = scores / best
    order = np.argsort(-scores, kind="stable")[:n]
    return [item_ids[i] for i in order if scores[i] > 0], scores


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 300-item catalog in two shards, a log over it and the three models fit on it."""
    path = tmp_path_factory.mktemp("idx") / "index"
    catalog, _, _ = make_shards(path, n=300, dim=16, n_shards=2)
    item_ids = catalog["item_id"].to_pylist()
    log = make_log(item_ids, 80, 8)
    return (
        item_ids,
        log,
        ItemKNN.fit(log, item_ids),
        AlsModel.fit(log, item_ids, factors=8, iterations=10),
        EaseModel.fit(log, item_ids, lam=5.0, max_items=120),
        [Shard.load(path, s) for s in range(2)],
    )


def test_models_of_one_catalog_share_its_index_and_a_request_is_looked_up_once(small):
    item_ids, log, knn, als, ease, _ = small
    other = ItemKNN.fit(log, item_ids[::-1])  # the same items in another order
    share_catalog(knn, None, als, ease, other)
    assert als.index is knn.index and ease.index is knn.index and als.item_ids is knn.item_ids
    assert other.index is not knn.index and other.item_ids == item_ids[::-1]
    assert make_core(knn, als, ease)._models.catalog is knn.index

    seen = Positioned.of(knn.index, [item_ids[5], "no-such-item", item_ids[0]])
    assert list(seen.positions) == [5, -1, 0]
    assert positions_of(ease.index, seen) is seen.positions  # not looked up again
    # Another index looks the ids up itself.
    last = len(item_ids) - 1
    assert list(positions_of(other.index, seen)) == [last - 5, -1, last]


def requests(log: pa.Table, item_ids: list[str], count: int):
    """(history, seen) pairs: users' histories, some with unknown or older seen items."""
    rng = np.random.default_rng(1)
    users = log["user_id"].to_pylist()
    items = log["item_id"].to_pylist()
    out = []
    for u in sorted(set(users))[:count]:
        history = [i for v, i in zip(users, items, strict=True) if v == u]
        extra = [item_ids[j] for j in rng.choice(len(item_ids), 3)] + ["no-such-item"]
        out.append((history, history + extra))
        out.append((history, []))  # exclude_seen false: nothing is excluded
    return out


def test_sparse_scores_give_the_dense_tops_and_every_items_score(small):
    item_ids, log, knn, als, ease, _ = small
    n = 7  # a cut inside the scored items, so the order at the cut matters
    core = make_core(knn, als, ease, cf_candidates=n, als_candidates=n, ease_candidates=n)
    half_life = core.config.router.ease_half_life
    assert core._models.als_index is not None and core._models.als_index.exact
    for history, seen in requests(log, item_ids, 40):
        got = core._collaborative(core._models, history, seen)
        dense = {
            "cf": knn.scores(history),
            "als": als.scores(history),
            "ease": ease.scores(history, recency_weights(len(history), half_life)),
        }
        for name, scores in dense.items():
            want = dense_reference(scores, item_ids, seen, n)
            if want is None:
                assert name not in got
                continue
            top, normalised = want
            assert got[name].top == top, name
            every = got[name].of([*item_ids, "no-such-item"])
            assert every[-1] == 0.0
            if name == "als":  # dot products in other kernels: equal to float32 rounding
                np.testing.assert_allclose(every[:-1], normalised, rtol=0, atol=1e-6)
            else:
                np.testing.assert_array_equal(every[:-1], normalised)


async def test_every_pool_candidate_carries_its_dense_scores_as_features(small):
    item_ids, log, knn, als, ease, shards = small
    core = make_core(knn, als, ease, shards=shards)
    half_life = core.config.router.ease_half_life
    position = {item_id: i for i, item_id in enumerate(item_ids)}
    for history, _ in requests(log, item_ids, 10):
        pool = await core.candidate_pool(RecommendRequest(history=history))
        dense = {
            "item_knn": knn.scores(history),
            "als": als.scores(history),
            "ease": ease.scores(history, recency_weights(len(history), half_life)),
        }
        for feature, scores in dense.items():
            top, normalised = dense_reference(scores, item_ids, history, 50)
            column = FEATURES.index(feature)
            got = np.array([e.features[column] for e in pool])
            want = normalised[[position[e.item_id] for e in pool]]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 if feature == "als" else 0)
            source = {"item_knn": "cf"}.get(feature, feature)
            assert {e.item_id for e in pool if source in e.sources} == set(top)


def test_item_knn_sums_are_the_dense_sums_bit_for_bit(small):
    item_ids, log, knn, *_ = small
    for history, _ in requests(log, item_ids, 20):
        rows = [knn.index[i] for i in history]
        dense = np.asarray(knn.neighbours[rows].sum(axis=0), dtype=np.float32).ravel()
        positions, values = knn.sparse_scores(history)
        assert np.all(np.diff(positions) > 0) and np.all(values != 0)
        np.testing.assert_array_equal(dense[positions], values)
        assert not np.delete(dense, positions).any()


def test_a_history_the_models_do_not_know_scores_nothing(small):
    _, _, knn, als, ease, _ = small
    core = make_core(knn, als, ease)
    assert core._collaborative(core._models, ["no-such-item"], []) == {}
    assert core._collaborative(core._models, [], []) == {}


def test_factor_index_skips_zero_rows_and_is_exact_below_the_threshold():
    rng = np.random.default_rng(2)
    factors = rng.standard_normal((50, 4)).astype(np.float32)
    factors[::5] = 0.0  # items nobody took: ALS leaves their factors at 0
    index = FactorIndex(factors, exact_max_items=50)
    assert (
        index.exact and len(index) == 40 and not np.isin(np.arange(0, 50, 5), index.positions).any()
    )
    query = rng.standard_normal(4).astype(np.float32)
    positions, scores = index.search(query, 10)
    expected = [p for p in np.argsort(-(factors @ query), kind="stable") if p % 5][:10]
    assert positions.tolist() == expected
    np.testing.assert_allclose(scores, factors[positions] @ query, rtol=1e-5)
    assert len(index.search(query, 100)[0]) == 40
    assert not FactorIndex(factors, exact_max_items=39).exact


def test_above_the_threshold_als_proposes_from_hnsw_with_high_recall():
    item_ids = [str(i) for i in range(3000)]
    log = make_log(item_ids, 400, 20, seed=3)
    als = AlsModel.fit(log, item_ids, factors=16, iterations=10)
    n = 50
    core = make_core(als=als, als_candidates=n, als_exact_max_items=500)
    index = core._models.als_index
    assert index is not None and not index.exact and len(index) > 500
    recalls = []
    for history, seen in requests(log, item_ids, 60):
        top, normalised = dense_reference(als.scores(history), item_ids, seen, n)
        got = core._collaborative(core._models, history, seen)["als"]
        recalls.append(len(set(got.top) & set(top)) / len(top))
        assert not set(got.top) & set(seen)
        every = got.of(item_ids)
        assert every.min() >= 0.0 and every.max() <= 1.0
        # The scores of what it proposes are the exact ones, relative to the best it found.
        best_found = normalised[[int(i) for i in got.top]].max()
        np.testing.assert_allclose(
            every[[int(i) for i in got.top]],
            normalised[[int(i) for i in got.top]] / best_found,
            rtol=0,
            atol=1e-6,
        )
    assert np.mean(recalls) >= 0.95
