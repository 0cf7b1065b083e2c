"""EASE: closed-form item-item weights against hand-computed values, and its baselines."""

import numpy as np
import pyarrow as pa
import pytest

from retrieval.ease import EaseModel, recency_weights
from retrieval.evaluate import EaseRanker, RecentEaseRanker


def _log(pairs):
    users, items = zip(*pairs, strict=True)
    return pa.table({"user_id": list(users), "item_id": list(items)})


# u1 took a, b; u2 a, c; u3 b (twice: counts once).
SMALL = _log([("1", "a"), ("1", "b"), ("2", "a"), ("2", "c"), ("3", "b"), ("3", "b")])

# By hand, λ = 1: XᵀX + I = [[3, 1, 1], [1, 3, 0], [1, 0, 2]], determinant 13, so
# P = [[6, -2, -3], [-2, 5, 1], [-3, 1, 8]] / 13 and B_ij = -P_ij / P_jj (i ≠ j).
B_SMALL = np.array(
    [
        [0.0, 2 / 5, 3 / 8],
        [2 / 6, 0.0, -1 / 8],
        [3 / 6, -1 / 5, 0.0],
    ]
)


def _ease_by_definition(x: np.ndarray, lam: float) -> np.ndarray:
    """B = I - P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹, straight from the paper."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))


def test_weights_match_the_hand_computed_inverse():
    model = EaseModel.fit(SMALL, ["a", "b", "c"], lam=1.0)
    assert model.kept.tolist() == [0, 1, 2]
    np.testing.assert_allclose(model.weights, B_SMALL, rtol=1e-6)
    np.testing.assert_allclose(model.scores(["a"]), [0.0, 2 / 5, 3 / 8], rtol=1e-6)
    np.testing.assert_allclose(model.scores(["b", "c"]), [2 / 6 + 3 / 6, -1 / 5, -1 / 8], rtol=1e-6)


def test_weights_match_the_definition_on_a_random_log():
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 7
    x = (rng.random((n_users, n_items)) < 0.35).astype(np.float64)
    x[0] = 1.0  # every item has a user, so all are modelled
    items = [f"i{j}" for j in range(n_items)]
    pairs = [(f"u{u}", items[j]) for u, j in zip(*np.nonzero(x), strict=True)]
    pairs += pairs[:10]  # repeated events change nothing
    model = EaseModel.fit(_log(pairs), items, lam=5.0)
    expected = _ease_by_definition(x, 5.0)
    np.testing.assert_allclose(model.weights, expected, atol=1e-6)
    assert np.all(np.diag(model.weights) == 0.0)
    history = ["i2", "i5", "unknown"]
    np.testing.assert_allclose(model.scores(history), expected[[2, 5]].sum(axis=0), atol=1e-6)


def test_diagonal_is_zero_so_an_item_never_scores_itself():
    model = EaseModel.fit(SMALL, ["a", "b", "c"], lam=0.5)
    assert np.all(np.diag(model.weights) == 0.0)
    assert model.scores(["c"])[2] == 0.0


def test_larger_lambda_shrinks_every_weight():
    sizes = [
        np.abs(EaseModel.fit(SMALL, ["a", "b", "c"], lam=lam).weights)
        for lam in (1.0, 10.0, 100.0, 1000.0)
    ]
    off = ~np.eye(3, dtype=bool)
    for bigger, smaller in zip(sizes, sizes[1:], strict=False):
        assert np.all(smaller[off] < bigger[off])
    # For λ far above the counts, B tends to the co-occurrences over λ.
    lam = 1e5
    b = EaseModel.fit(SMALL, ["a", "b", "c"], lam=lam).weights
    cooc = np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(lam * b, cooc, atol=1e-3)


def test_only_the_most_popular_items_are_modelled():
    # a: 4 users, b: 3, c: 2, d: 1, e: none.
    log = _log(
        [("1", "a"), ("2", "a"), ("3", "a"), ("4", "a")]
        + [("1", "b"), ("2", "b"), ("3", "b")]
        + [("1", "c"), ("4", "c"), ("2", "d")]
    )
    items = ["e", "d", "c", "b", "a"]
    model = EaseModel.fit(log, items, lam=1.0, max_items=2)
    assert [items[i] for i in model.kept] == ["b", "a"]
    assert model.weights.shape == (2, 2) and model.weights.nbytes == 2 * 2 * 4
    # The kept block is EASE of the log restricted to a and b.
    x_ba = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], dtype=np.float64)
    np.testing.assert_allclose(model.weights, _ease_by_definition(x_ba, 1.0), rtol=1e-6)
    scores = model.scores(["a", "c", "d"])
    assert scores[[0, 1, 2]].tolist() == [0.0, 0.0, 0.0]  # e, d, c are outside the model
    assert scores[3] > 0.0
    assert not model.scores(["c", "d", "e"]).any()  # a history only of unmodelled items
    # Asking for more items than anyone took keeps only the taken ones.
    assert len(EaseModel.fit(log, items, lam=1.0, max_items=10).kept) == 4


def test_scores_weight_each_history_item_once():
    model = EaseModel.fit(SMALL, ["a", "b", "c"], lam=1.0)
    np.testing.assert_allclose(
        model.scores(["b", "c"], [0.5, 2.0]), 0.5 * B_SMALL[1] + 2.0 * B_SMALL[2], rtol=1e-6
    )
    # A repeated item counts once, with its largest weight; unknown ids are ignored.
    np.testing.assert_allclose(
        model.scores(["b", "x", "b"], [0.25, 9.0, 1.0]), B_SMALL[1], rtol=1e-6
    )
    np.testing.assert_allclose(model.scores(["b", "b"]), B_SMALL[1], rtol=1e-6)
    with pytest.raises(ValueError, match="2 weights for a history of 3"):
        model.scores(["a", "b", "c"], [1.0, 1.0])


def test_fit_rejects_settings_that_have_no_model():
    with pytest.raises(ValueError, match="lam"):
        EaseModel.fit(SMALL, ["a", "b", "c"], lam=0.0)
    with pytest.raises(ValueError, match="max_items"):
        EaseModel.fit(SMALL, ["a", "b", "c"], max_items=0)


def test_recency_weights_halve_every_half_life():
    np.testing.assert_allclose(recency_weights(3, 1.0), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(recency_weights(3, 2.0), [0.5, 0.5**0.5, 1.0])
    np.testing.assert_allclose(recency_weights(11, 5.0)[[0, 5, 10]], [0.25, 0.5, 1.0])
    assert len(recency_weights(0, 5.0)) == 0


def test_ease_ranker_excludes_the_history_and_falls_back_to_popularity():
    # y: one user who took nothing else (weight 0 everywhere); z: nobody.
    log = pa.concat_tables([SMALL, _log([("4", "y")])])
    items = ["z", "a", "b", "c", "y"]
    model = EaseModel.fit(log, items, lam=1.0)
    popularity = np.array([0.0, 2.0, 2.0, 1.0, 1.0])
    ranker = EaseRanker(model, popularity)
    assert ranker.name == "ease"
    # From c: a scores 1/2, b -1/5; y and z score 0 and go by popularity (y first).
    assert ranker.rank(["c"], 4) == ["a", "y", "z", "b"]
    assert ranker.rank(["c"], 2) == ["a", "y"]
    # No usable history: popularity order (ties by catalog order).
    assert ranker.rank(["unknown"], 5) == ["a", "b", "c", "y", "z"]


def test_recent_ease_ranker_favours_the_latest_item():
    items = ["p", "q", "r", "s"]
    weights = np.zeros((4, 4), dtype=np.float32)
    weights[0, 2] = 2.0  # p → r
    weights[1, 3] = 1.5  # q → s
    model = EaseModel(items, np.arange(4), weights)
    popularity = np.array([4.0, 3.0, 2.0, 1.0])
    recent = RecentEaseRanker(model, popularity, half_life=1.0)
    assert recent.name == "ease_recent"
    assert EaseRanker(model, popularity).rank(["p", "q"], 2) == ["r", "s"]
    # q is the latest (weight 1), p one step back (0.5): s 1.5 beats r 1.0.
    assert recent.rank(["p", "q"], 2) == ["s", "r"]
    np.testing.assert_allclose(recent.scores(["p", "q"]), [0.0, 0.0, 1.0, 1.5])
    assert RecentEaseRanker(model, popularity).half_life == 5.0
    with pytest.raises(ValueError, match="half_life"):
        RecentEaseRanker(model, popularity, half_life=0.0)


def test_save_load_round_trip(tmp_path):
    items = ["z", "a", "b", "c"]
    model = EaseModel.fit(SMALL, items, lam=1.0, max_items=2)
    path = tmp_path / "ease.npz"
    model.save(path)
    loaded = EaseModel.load(path)
    assert loaded.item_ids == items
    assert loaded.kept.tolist() == model.kept.tolist()
    np.testing.assert_array_equal(loaded.weights, model.weights)
    for history in (["a"], ["b", "c"], ["c"]):
        np.testing.assert_array_equal(loaded.scores(history), model.scores(history))


def test_large_fits_invert_in_float32_to_the_same_weights(monkeypatch):
    monkeypatch.setattr("retrieval.ease._FLOAT64_MAX_ITEMS", 2)
    model = EaseModel.fit(SMALL, ["a", "b", "c"], lam=1.0)
    np.testing.assert_allclose(model.weights, B_SMALL, rtol=1e-5)
    assert np.all(np.diag(model.weights) == 0.0)
