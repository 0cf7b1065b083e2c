"""Baselines, fusion-weight tuning and rerank-weight tuning on data the tests make."""

import numpy as np
import pyarrow as pa
import pytest

from retrieval.collab import ItemKNN
from retrieval.evaluate import (
    ContentRanker,
    ItemKNNRanker,
    PopularityRanker,
    RerankHead,
    fusion_grid,
    rank_all,
    rerank_ndcg_by_weight,
    rerank_ndcg_per_user,
    sample_users,
    tune_fusion,
    tune_rerank_weight,
)
from retrieval.fusion import FEATURES, FusionWeights, fuse, load_fusion, save_fusion

ITEMS = ["a", "b", "c", "d", "e"]


@pytest.fixture
def knn():
    # a: 3 users, b: 2, c: 1 (with a), d, e: none.
    log = pa.table(
        {
            "user_id": ["1", "2", "3", "1", "2", "1"],
            "item_id": ["a", "a", "a", "b", "b", "c"],
        }
    )
    return ItemKNN.fit(log, ITEMS)


def test_popularity_baseline_excludes_the_history(knn):
    assert PopularityRanker(knn).rank(["a"], 3) == ["b", "c", "d"]


def test_item_knn_baseline_falls_back_to_popularity(knn):
    ranked = ItemKNNRanker(knn).rank(["c"], 4)
    assert ranked[:2] == ["b", "a"]  # cosine with c: b 1/sqrt(2), a 1/sqrt(3)
    assert ranked[2:] == ["d", "e"]  # no similarity left: popularity order (ties by catalog)


def test_content_baseline_is_exact_nearest_to_the_profile(knn):
    vectors = np.eye(5, dtype=np.float32)
    vectors[3] = [0.9, 0, 0, 0.1, 0]  # d is close to a
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ranker = ContentRanker(ITEMS, vectors, knn.popularity, half_life=10.0, max_history=50)
    assert ranker.rank(["a"], 2) == ["d", "b"]
    rankings, seconds = rank_all(ranker, ["u"], {"u": ["a"]}, 1, progress=False)
    assert rankings == {"u": ["d"]} and len(seconds) == 1


def test_sample_users_is_seeded_and_keeps_order():
    users = [str(i) for i in range(100)]
    first = sample_users(users, 10, seed=3)
    assert first == sample_users(users, 10, seed=3) != sample_users(users, 10, seed=4)
    assert first == sorted(first, key=int) and len(set(first)) == 10
    assert sample_users(users, None, seed=0) == users == sample_users(users, 500, seed=0)


def test_fusion_grid_has_one_point_per_ratio():
    grid = fusion_grid()
    assert all(w.shape == (len(FEATURES),) and w.any() for w in grid)
    keys = {tuple(np.round(w / w.max(), 6)) for w in grid}
    assert len(keys) == len(grid)


def test_fusion_weights_change_the_order():
    # x is the nearest by cosine, y the ALS favourite, z the sequential model's.
    features = np.array(
        [
            [0.9, 0.0, 0.1, 0.0, 0.0, 0.1],
            [0.5, 0.0, 1.0, 0.0, 0.0, 0.1],
            [0.5, 0.0, 0.1, 0.0, 0.0, 1.0],
        ]
    )
    none = dict.fromkeys(FEATURES, 0.0)
    ann_only = FusionWeights(**{**none, "ann": 1.0})
    als_heavy = FusionWeights(**{**none, "ann": 0.1, "als": 1.0})
    sequential_heavy = FusionWeights(**{**none, "ann": 0.1, "sequential": 1.0})
    assert np.argmax(fuse(features, ann_only)) == 0
    assert np.argmax(fuse(features, als_heavy)) == 1
    assert np.argmax(fuse(features, sequential_heavy)) == 2


def test_tune_fusion_finds_the_informative_feature():
    rng = np.random.default_rng(0)
    pools, targets = {}, {}
    for u in range(40):
        features = rng.random((30, len(FEATURES)))
        t = int(rng.integers(30))
        features[t, 2] = 1.5  # ALS always puts the target first; the rest is noise
        pools[str(u)] = ([f"i{j}" for j in range(30)], features)
        targets[str(u)] = f"i{t}"
    base = FusionWeights(rerank=0.3)
    chosen, table = tune_fusion(pools, targets, k=1, base=base)
    assert chosen.als > 0 and chosen.rerank == 0.3
    best = max(v for _, v in table)
    assert best == 1.0  # NDCG@1 of every user
    # Ann-only is far worse on the same pools.
    ann_only = [v for w, v in table if w[0] > 0 and not w[1:].any()]
    assert ann_only and ann_only[0] < 0.5


def _heads(llm_likes_target: bool) -> tuple[dict[str, RerankHead], dict[str, str]]:
    heads, targets = {}, {}
    for u in range(5):
        ranked = ["x", "y", "z", "w"]  # target z sits third by retrieval
        llm = [0.0, 0.1, 1.0] if llm_likes_target else [1.0, 0.9, 0.0]
        heads[str(u)] = RerankHead(ranked=ranked, retrieval=[0.9, 0.8, 0.7], llm=llm)
        targets[str(u)] = "z"
    return heads, targets


def test_rerank_weight_zero_is_the_retrieval_order():
    heads, targets = _heads(llm_likes_target=True)
    by_weight = rerank_ndcg_by_weight(rerank_ndcg_per_user(heads, targets, k=3))
    assert by_weight[0.0] == pytest.approx(0.5)  # rank 2 → 1/log2(4)
    assert by_weight[1.0] == 1.0


def test_rerank_weight_is_chosen_only_when_the_llm_helps():
    helps, targets = _heads(llm_likes_target=True)
    weight, lift = tune_rerank_weight(rerank_ndcg_per_user(helps, targets, k=3))
    assert weight > 0 and lift is not None and lift["ci"][0] > 0
    hurts, targets = _heads(llm_likes_target=False)
    per_user = rerank_ndcg_per_user(hurts, targets, k=3)
    assert tune_rerank_weight(per_user) == (0.0, None)
    assert rerank_ndcg_by_weight(per_user)[0.0] == max(rerank_ndcg_by_weight(per_user).values())


def test_a_rerank_gain_inside_the_noise_keeps_weight_zero():
    # One user of twenty gains from the LLM, another loses, the rest keep their order: the
    # best weight's mean is above weight 0's, but the paired interval over users holds 0.
    heads, targets = {}, {}
    for u in range(20):
        ranked = ["x", "z", "y", "w"] if u == 1 else ["x", "y", "z", "w"]
        llm = [0.0, 0.1, 1.0] if u in (0, 1) else [1.0, 0.5, 0.0]  # 0, 1: the LLM likes 3rd
        heads[str(u)] = RerankHead(ranked=ranked, retrieval=[0.9, 0.8, 0.7], llm=llm)
        targets[str(u)] = "z"
    per_user = rerank_ndcg_per_user(heads, targets, k=3)
    means = rerank_ndcg_by_weight(per_user)
    assert max(means.values()) > means[0.0]
    weight, lift = tune_rerank_weight(per_user)
    assert weight == 0.0
    assert lift is not None and lift["ci"][0] <= 0 < lift["mean"]


def test_fusion_file_round_trip(tmp_path):
    weights = FusionWeights(
        ann=0.1,
        item_knn=0.25,
        als=1.0,
        popularity=0.4,
        rerank=0.0,
        profile_half_life=2.0,
        tuned={"users": 3},
    )
    save_fusion(tmp_path / "fusion.json", weights)
    again = load_fusion(tmp_path)
    assert again == weights and again.tuned == {"users": 3}
    assert load_fusion(tmp_path / "nowhere") is None
    # Weights tuned before EASE joined the features give it none.
    (tmp_path / "fusion.json").write_text('{"ann": 0.5, "item_knn": 0.2, "als": 1.0}')
    older = load_fusion(tmp_path)
    assert older.ease == 0.0 and older.popularity == 0.0 and older.als == 1.0
    assert older.profile_half_life is None  # the config's history_half_life applies
    for bad in ('{"ann": -1}', '{"ann": 1, "profile_half_life": 0}'):
        (tmp_path / "fusion.json").write_text(bad)
        with pytest.raises(ValueError, match="fusion.json"):
            load_fusion(tmp_path)
