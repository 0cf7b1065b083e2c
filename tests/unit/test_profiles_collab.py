import numpy as np
import pyarrow as pa
import pytest

from retrieval.collab import AlsModel, ItemKNN
from retrieval.profiles import blend_query, histories_from_log, recency_weights, user_profile


def test_recency_weights_halve_every_half_life():
    np.testing.assert_allclose(recency_weights(3, 1.0), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(recency_weights(5, 2.0)[[0, 2, 4]], [0.25, 0.5, 1.0])


def test_profile_leans_to_recent_items():
    old, new = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    p = user_profile(np.stack([old, new]), half_life=1.0)
    # weights 0.5 and 1 → (0.5, 1) normalised
    np.testing.assert_allclose(p, np.array([0.5, 1.0]) / np.sqrt(1.25), rtol=1e-6)
    with pytest.raises(ValueError):
        user_profile(np.zeros((0, 2), np.float32), 1.0)


def test_blend_query_weights_and_normalises():
    p, q = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    np.testing.assert_allclose(blend_query(p, q, 0.5), [np.sqrt(0.5)] * 2, rtol=1e-6)
    np.testing.assert_allclose(blend_query(None, q * 3, 0.5), q)
    np.testing.assert_allclose(blend_query(p, None, 0.5), p)


def test_histories_are_ordered_by_time():
    h = histories_from_log(["u", "v", "u", "u"], ["b", "x", "a", "c"], [20, 5, 10, 30])
    assert h == {"u": ["a", "b", "c"], "v": ["x"]}


def _log(pairs):
    users, items = zip(*pairs, strict=True)
    return pa.table({"user_id": list(users), "item_id": list(items)})


def test_item_knn_recommends_co_taken_items(tmp_path):
    # users who took "a" also took "b"; "c" goes with "d"
    log = _log(
        [
            ("1", "a"),
            ("1", "b"),
            ("2", "a"),
            ("2", "b"),
            ("3", "c"),
            ("3", "d"),
            ("4", "a"),
            ("4", "b"),
            ("4", "a"),
        ]
    )
    knn = ItemKNN.fit(log, ["a", "b", "c", "d", "e"])
    assert [i for i, _ in knn.recommend(["a"], 3)] == ["b"]
    assert [i for i, _ in knn.recommend(["c"], 3)] == ["d"]
    assert knn.recommend(["a"], 3, exclude=["b"]) == []
    assert [i for i, _ in knn.most_popular(2)] == ["a", "b"]
    assert [i for i, _ in knn.most_popular(2, exclude=["a"])] == ["b", "c"]
    knn.save(tmp_path / "cf.npz")
    again = ItemKNN.load(tmp_path / "cf.npz")
    assert again.recommend(["a"], 3) == knn.recommend(["a"], 3)
    assert again.item_ids == knn.item_ids


def test_item_knn_keeps_top_n_neighbours():
    pairs = [(str(u), "hub") for u in range(10)] + [(str(u), f"i{u}") for u in range(10)]
    knn = ItemKNN.fit(_log(pairs), ["hub"] + [f"i{u}" for u in range(10)], top_n=3)
    assert knn.neighbours[0].nnz == 3


def test_item_knn_scores_and_popularity_feature():
    log = _log([("1", "a"), ("1", "b"), ("2", "a"), ("3", "c")])
    knn = ItemKNN.fit(log, ["a", "b", "c", "d"])
    scores = knn.scores(["b"])
    assert scores[0] > 0 and scores[2] == scores[3] == 0.0
    half = np.log(2) / np.log(3)  # log1p(1) / log1p(2): one user against the top's two
    np.testing.assert_allclose(knn.popularity_feature(), [1.0, half, half, 0.0], rtol=1e-6)
    assert knn.scores(["unknown"]).sum() == 0.0


def test_als_recommends_co_taken_items_and_round_trips(tmp_path):
    # Two groups of users with disjoint tastes.
    pairs = [(f"x{u}", i) for u in range(6) for i in ("a", "b", "c")]
    pairs += [(f"y{u}", i) for u in range(6) for i in ("d", "e", "f")]
    als = AlsModel.fit(_log(pairs), ["a", "b", "c", "d", "e", "f", "g"], factors=4, seed=1)
    top = [i for i, _ in als.recommend(["a"], 2, exclude=["a"])]
    assert set(top) == {"b", "c"}
    assert als.scores(["nothing-known"]).sum() == 0.0
    als.save(tmp_path / "als.npz")
    again = AlsModel.load(tmp_path / "als.npz")
    np.testing.assert_allclose(again.scores(["d"]), als.scores(["d"]), rtol=1e-5)
    assert again.item_ids == als.item_ids


def test_als_user_factor_is_implicits_recalculate_user():
    """The NumPy solve of a user's normal equations is the factor implicit's own
    `recalculate_user` gives, for short and long histories and repeated items."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(3)
    items = [f"i{n}" for n in range(300)]
    pairs = [(f"u{u}", items[int(i)]) for u in range(200) for i in rng.zipf(1.3, 30) % 300]
    als = AlsModel.fit(_log(pairs), items, factors=16, iterations=5)
    reference = AlternatingLeastSquares(
        factors=16, regularization=als.regularization, alpha=als.alpha, num_threads=1
    )
    reference.item_factors = als.item_factors
    for n in (1, 7, 60, 290):
        history = [items[int(i)] for i in rng.integers(0, 300, n)]
        cols = sorted({als.index[i] for i in history})
        row = sp.csr_matrix(
            (np.ones(len(cols), np.float32), ([0] * len(cols), cols)), shape=(1, len(items))
        )
        expected = np.asarray(reference.recalculate_user(0, row))
        got = als.user_factor(history)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert als.user_factor(["not-in-the-catalog"]) is None
