"""Ranking metrics against hand-computed cases."""

import math

import pytest

from retrieval.metrics import (
    catalog_coverage,
    latency_summary,
    ndcg_at_k,
    paired_bootstrap,
    per_user_ndcg,
    per_user_recall,
    rank_of,
    recall_at_k,
    reciprocal_rank,
    score_rankings,
)


def test_single_target_metrics_by_rank():
    assert rank_of(["a", "b", "c"], "c") == 2 and rank_of(["a"], "z") is None
    assert recall_at_k(0, 1) == 1.0 and recall_at_k(1, 1) == 0.0 and recall_at_k(None, 10) == 0.0
    assert ndcg_at_k(0, 10) == 1.0
    assert ndcg_at_k(2, 10) == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert ndcg_at_k(10, 10) == 0.0  # rank 11 is outside the top 10
    assert reciprocal_rank(3) == 0.25 and reciprocal_rank(None) == 0.0


def test_score_rankings_means_over_users():
    rankings = {
        "u1": ["a", "b", "c", "d"],  # target a at rank 0
        "u2": ["b", "c", "a", "d"],  # target a at rank 2
        "u3": ["b", "c", "d", "e"],  # target a missing
        "u4": ["e", "d", "c", "z"],  # target z at rank 3, outside k=2
    }
    targets = {"u1": "a", "u2": "a", "u3": "a", "u4": "z"}
    m = score_rankings(rankings, targets, k=2, catalog_size=10)
    assert m.users == 4
    assert m.recall == pytest.approx(1 / 4)  # only u1 within the top 2
    assert m.ndcg == pytest.approx(1 / 4)
    assert m.mrr == pytest.approx((1 + 1 / 3 + 0 + 1 / 4) / 4)
    # top-2 lists show a, b, c, e, d → 5 of 10 items
    assert m.coverage == pytest.approx(0.5)
    assert m.to_json() == {
        "recall_at_2": 0.25,
        "ndcg_at_2": 0.25,
        "mrr": round((1 + 1 / 3 + 1 / 4) / 4, 6),
        "coverage": 0.5,
        "users": 4,
    }


def test_ndcg_rewards_earlier_hits():
    early = score_rankings({"u": ["t", "x"]}, {"u": "t"}, k=2, catalog_size=2)
    late = score_rankings({"u": ["x", "t"]}, {"u": "t"}, k=2, catalog_size=2)
    assert early.recall == late.recall == 1.0
    assert early.ndcg == 1.0 and late.ndcg == pytest.approx(1 / math.log2(3))


def test_coverage_and_latency_summary():
    assert catalog_coverage([["a", "b"], ["b", "c"]], k=1, catalog_size=4) == 0.5
    with pytest.raises(ValueError):
        catalog_coverage([], k=1, catalog_size=0)
    s = latency_summary([0.001, 0.002, 0.003, 0.004])
    # Nearest rank: p50 of four is the 2nd value, p95 the 4th.
    assert s["mean"] == 2.5 and s["p50"] == 2.0 and s["p95"] == 4.0 and s["max"] == 4.0
    assert latency_summary([]) == {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}


def test_per_user_ndcg_is_what_score_rankings_averages():
    rankings = {"a": ["1", "2", "3"], "b": ["3", "1"], "c": ["9"]}
    targets = {"a": "2", "b": "3", "c": "1"}
    per_user = per_user_ndcg(rankings, targets, k=2)
    assert per_user == {"a": pytest.approx(1 / math.log2(3)), "b": 1.0, "c": 0.0}
    mean = score_rankings(rankings, targets, 2, 10).ndcg
    assert sum(per_user.values()) / 3 == pytest.approx(mean)


def test_per_user_recall_is_what_score_rankings_averages():
    rankings = {"a": ["1", "2", "3"], "b": ["3", "1"], "c": ["9"]}
    targets = {"a": "3", "b": "1", "c": "1"}
    per_user = per_user_recall(rankings, targets, k=2)
    assert per_user == {"a": 0.0, "b": 1.0, "c": 0.0}
    assert sum(per_user.values()) / 3 == pytest.approx(
        score_rankings(rankings, targets, 2, 10).recall
    )


def test_paired_bootstrap_interval_of_the_mean_difference():
    before = [0.0, 0.5, 1.0, 0.2] * 25
    same = paired_bootstrap(before, before)
    assert same == {"mean": 0.0, "ci": [0.0, 0.0], "users": 100}  # no difference, no spread
    lifted = paired_bootstrap(before, [b + 0.1 for b in before])
    assert lifted["mean"] == pytest.approx(0.1) and lifted["ci"] == pytest.approx([0.1, 0.1])
    # Half the users gain 0.2, half lose 0.1: a mean of +0.05 whose interval holds it
    # and stays inside the spread of the differences.
    after = [b + (0.2 if i % 2 else -0.1) for i, b in enumerate(before)]
    mixed = paired_bootstrap(before, after, seed=1)
    low, high = mixed["ci"]
    assert mixed["mean"] == pytest.approx(0.05)
    assert -0.1 < low < 0.05 < high < 0.2 and high - low < 0.1
    assert paired_bootstrap(before, after, seed=1) == mixed  # seeded
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([0.1], [0.1, 0.2])
