"""The learned fusion: its inputs, what it learns that weights cannot, its guard, its files."""

import json

import lightgbm as lgb
import numpy as np
import pytest

from retrieval.fusion import FEATURES, FUSION_NAME, FusionWeights, fuse, load_fusion, save_fusion
from retrieval.ltr import (
    LEARNED_FEATURES,
    LEARNED_NAME,
    LearnedFusion,
    ranking_features,
    tune_learned_fusion,
)

_ANN, _KNN, _ALS, _POP, _EASE, _SEQ = range(len(FEATURES))


def test_ranking_features_by_hand():
    features = np.array(
        [
            [0.9, 0.0, 0.2, 0.5, 0.0, 0.3],
            [0.1, 1.0, 0.2, 0.1, 0.0, 0.1],
            [0.5, 0.5, 0.9, 0.9, 0.0, 0.2],
        ]
    )
    x = ranking_features(features, history_len=7)
    assert x.shape == (3, len(LEARNED_FEATURES))
    np.testing.assert_array_equal(x[:, : len(FEATURES)], features)
    ranks = x[:, len(FEATURES) : 2 * len(FEATURES)] * 3  # back to 0-based ranks
    np.testing.assert_array_equal(ranks[:, _ANN], [0, 2, 1])
    np.testing.assert_array_equal(ranks[:, _KNN], [2, 0, 1])
    np.testing.assert_array_equal(ranks[:, _ALS], [1, 2, 0])  # the tie keeps pool order
    np.testing.assert_array_equal(ranks[:, _EASE], [0, 1, 2])  # all tied: pool order
    np.testing.assert_array_equal(ranks[:, _SEQ], [0, 2, 1])
    np.testing.assert_allclose(x[:, -1], np.log1p(7))
    assert ranking_features(np.zeros((0, len(FEATURES))), 3).shape == (0, len(LEARNED_FEATURES))


def _pools(n_users: int, seed: int, *, signal: bool = True):
    """Pools where the target is ALS's favourite for heavy users (history 200) and the most
    popular item for light ones (history 2): no single weighting ranks both first."""
    rng = np.random.default_rng(seed)
    pools, targets, lens = {}, {}, {}
    for u in range(n_users):
        n = 40
        features = rng.random((n, len(FEATURES))) * 0.8
        t = int(rng.integers(n))
        heavy = u % 2 == 0
        if signal:
            decoy = (t + 1) % n
            if heavy:
                features[t, _ALS] = 1.0
                features[decoy, _POP] = 1.0  # a popular decoy misleads a popularity weight
            else:
                features[t, _POP] = 1.0
                features[decoy, _ALS] = 1.0
        user = f"u{u}"
        pools[user] = ([f"i{j}" for j in range(n)], features)
        targets[user] = f"i{t}"
        lens[user] = 200 if heavy else 2
    return pools, targets, lens


def _ndcg(pools, targets, score):
    out = []
    for user, (ids, features) in pools.items():
        s = score(features, user)
        t = ids.index(targets[user])
        rank = int((s > s[t]).sum() + (s[:t] == s[t]).sum())
        out.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
    return float(np.mean(out))


def test_learned_fusion_uses_history_length_where_weights_cannot():
    pools, targets, lens = _pools(200, seed=0)
    model, report = tune_learned_fusion(pools, targets, lens, 10, base=FusionWeights(), seed=0)
    assert model is not None and report["kept"] and report["lift"]["ci"][0] > 0
    held = report["out_of_fold_ndcg_at_10"]
    assert held["learned"] > 0.9 > held["grid"] + 0.2
    # On users neither saw, the model ranks the target first for heavy and light users alike.
    test_pools, test_targets, test_lens = _pools(60, seed=1)
    learned = _ndcg(test_pools, test_targets, lambda f, u: model.scores(f, test_lens[u]))
    assert learned > 0.95
    assert report["gain"]["history_len"] > 0


def test_the_learned_fusion_is_kept_only_when_it_beats_the_weights():
    kept = 0
    for seed in range(20):
        pools, targets, lens = _pools(80, seed=seed, signal=False)  # nothing to learn
        model, report = tune_learned_fusion(pools, targets, lens, 10, base=FusionWeights())
        held = report["out_of_fold_ndcg_at_10"]
        assert report["kept"] == (model is not None) == (report["lift"]["ci"][0] > 0)
        assert report["lift"]["mean"] == pytest.approx(held["learned"] - held["grid"], abs=1e-5)
        assert report["users"] == 80 and report["folds"] == 5
        kept += report["kept"]
    # Noise is no reason to leave the weights: a 95% interval lets about one in 40 through.
    assert kept <= 2


def test_too_few_users_or_no_target_in_any_pool_is_skipped():
    pools, targets, lens = _pools(10, seed=0)
    model, report = tune_learned_fusion(pools, targets, lens, 10, base=FusionWeights())
    assert model is None and "10 validation users" in report["skipped"]
    pools, targets, lens = _pools(40, seed=0)
    absent = dict.fromkeys(targets, "not-in-any-pool")
    model, report = tune_learned_fusion(pools, absent, lens, 10, base=FusionWeights())
    assert model is None and "nothing to learn" in report["skipped"]


def test_fusion_files_round_trip_with_and_without_the_model(tmp_path):
    pools, targets, lens = _pools(120, seed=0)
    model, _ = tune_learned_fusion(pools, targets, lens, 10, base=FusionWeights())
    weights = FusionWeights(ann=0.5, als=1.0, rerank=0.0, learned=model)
    save_fusion(tmp_path / FUSION_NAME, weights)
    assert json.loads((tmp_path / FUSION_NAME).read_text())["learned"] == LEARNED_NAME
    loaded = load_fusion(tmp_path)
    assert loaded == weights and loaded.learned is not None
    features = pools["u0"][1]
    np.testing.assert_allclose(loaded.score(features, 200), model.scores(features, 200))
    # Without a model the weighted sum scores, and a stale model file goes.
    save_fusion(tmp_path / FUSION_NAME, FusionWeights(ann=0.5, als=1.0))
    assert not (tmp_path / LEARNED_NAME).exists()
    plain = load_fusion(tmp_path)
    assert plain.learned is None
    np.testing.assert_allclose(plain.score(features, 200), fuse(features, plain))


def test_a_model_trained_on_other_inputs_is_refused_by_name(tmp_path):
    pools, targets, lens = _pools(60, seed=0)
    rows = [(f, list(ids).index(targets[u]), lens[u]) for u, (ids, f) in pools.items()]
    narrow = [(f[:, :-1], t, h) for f, t, h in rows]  # as if tuned before the last feature
    params = {"objective": "lambdarank", "verbosity": -1, "num_threads": 1}
    xs = np.vstack([np.hstack([f, f, np.full((len(f), 1), h)]) for f, _, h in narrow])
    ys = np.concatenate([np.eye(len(f))[t] for f, t, _ in narrow])
    booster = lgb.train(params, lgb.Dataset(xs, ys, group=[len(f) for f, _, _ in narrow]), 2)
    booster.save_model(str(tmp_path / LEARNED_NAME))
    with pytest.raises(ValueError, match="tune again|--tune"):
        LearnedFusion.load(tmp_path / LEARNED_NAME)


def test_a_fusion_file_naming_a_missing_model_is_an_error(tmp_path):
    raw = {**FusionWeights().to_json(), "learned": LEARNED_NAME}
    (tmp_path / FUSION_NAME).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="does not exist"):
        load_fusion(tmp_path)


def test_training_needs_a_pool_with_its_target():
    with pytest.raises(ValueError, match="nothing to learn"):
        LearnedFusion.train([(np.zeros((3, len(FEATURES))), -1, 5)])
