"""Sequential model: causal and padding masks, next-item order on series data, its baseline."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from retrieval.evaluate import SequentialRanker
from retrieval.sequential import SequentialModel, _user_sequences, _windows, choose_engine
from retrieval.user_scores import sequential_scores

SERIES = [f"s{i}" for i in range(8)]
ITEMS = [*SERIES, "x0", "x1"]  # x0, x1: in the catalog, never watched
TINY = {"max_len": 8, "dim": 16, "heads": 2, "blocks": 1, "lr": 1e-2, "progress": False}


def _log(pairs, ts=None):
    users, items = zip(*pairs, strict=True) if pairs else ((), ())
    columns = {"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string())}
    if ts is not None:
        columns["ts"] = pa.array(ts, pa.int64())
    return pa.table(columns)


def make_series_log(n_users: int = 40, length: int = 12, seed: int = 0) -> pa.Table:
    """Every user watches the cycle s0 → s1 → … → s7 → s0 in order from a random start."""
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(n_users):
        start = int(rng.integers(len(SERIES)))
        pairs += [(f"u{u}", SERIES[(start + k) % len(SERIES)]) for k in range(length)]
    return _log(pairs)


def _next(i: int) -> str:
    return SERIES[(i + 1) % len(SERIES)]


def _top(model: SequentialModel, history) -> str:
    return ITEMS[int(np.argmax(model.scores(history)))]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is many times faster than several contending for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def series_model() -> SequentialModel:
    return SequentialModel.fit(make_series_log(), ITEMS, epochs=60, **TINY)


def test_every_series_item_is_followed_by_the_next(series_model):
    ranker = SequentialRanker(series_model, np.zeros(len(ITEMS)))
    for i in range(len(SERIES)):
        recent = [SERIES[(i - 2) % 8], SERIES[(i - 1) % 8], SERIES[i]]
        assert _top(series_model, [SERIES[i]]) == _next(i)
        assert ranker.rank(recent, 1) == [_next(i)]


def test_order_of_the_history_matters(series_model):
    assert _top(series_model, ["s2", "s3"]) == "s4"
    assert _top(series_model, ["s3", "s2"]) == "s3"


def test_a_position_never_sees_the_items_after_it(series_model):
    net = series_model.network
    seq = torch.tensor([[0, 0, 3, 5, 2, 7, 1, 4]])
    with torch.inference_mode():
        out = net(seq)
        for t in range(2, seq.shape[1] - 1):
            changed = seq.clone()
            changed[0, t + 1 :] = changed[0, t + 1 :] % 8 + 1
            other = net(changed)
            torch.testing.assert_close(other[0, : t + 1], out[0, : t + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(other[0, -1], out[0, -1], atol=1e-3)


def test_padding_changes_nothing(series_model):
    net = series_model.network
    seq = torch.tensor([[3, 4, 5]])
    with torch.inference_mode():
        unpadded = net(seq)[:, -1]
        for width in (4, 6, 8):
            padded = torch.cat([torch.zeros(1, width - 3, dtype=torch.long), seq], dim=1)
            torch.testing.assert_close(net(padded)[:, -1], unpadded, rtol=0, atol=1e-5)
    # In a batch, a short history is padded to the longest: its scores stay the same.
    short, full = ["s2", "s3", "s4"], ["s7", *SERIES[:7]]
    batch = series_model.scores_batch([short, full, []])
    np.testing.assert_allclose(batch[0], series_model.scores(short), atol=1e-5)
    np.testing.assert_allclose(batch[1], series_model.scores(full), atol=1e-5)
    assert not batch[2].any()
    # Only the last max_len items count.
    np.testing.assert_array_equal(
        series_model.scores(["s5", "s0", *full]), series_model.scores(full)
    )


def test_unknown_ids_are_ignored_and_no_history_scores_zero(series_model):
    scores = series_model.scores(["s3"])
    assert scores.shape == (len(ITEMS),) and scores.dtype == np.float32
    np.testing.assert_array_equal(series_model.scores(["nope", "s3", "gone"]), scores)
    assert not series_model.scores([]).any()
    assert not series_model.scores(["nope"]).any()
    assert series_model.index["x0"] == 8 and series_model.item_ids == ITEMS


def test_save_load_round_trip(series_model, tmp_path):
    path = tmp_path / "sequential.npz"
    series_model.save(path)
    loaded = SequentialModel.load(path)
    assert loaded.item_ids == ITEMS
    assert (loaded.max_len, loaded.dim, loaded.heads, loaded.blocks) == (8, 16, 2, 1)
    assert loaded.epochs_run == series_model.epochs_run == 60
    histories = [["s1"], ["s6", "s7"], ["s3", "s2"], SERIES]
    np.testing.assert_array_equal(
        loaded.scores_batch(histories), series_model.scores_batch(histories)
    )


def test_a_log_with_no_usable_user_scores_zero(tmp_path):
    # One item each, or only items outside the catalog: nobody has a next item to learn.
    log = _log([("1", "s1"), ("2", "s2"), ("2", "gone"), ("3", "gone"), ("3", "lost")])
    for table in (log, _log([])):
        model = SequentialModel.fit(table, ITEMS, **TINY)
        assert model.epochs_run == 0
        assert not model.scores_batch([["s1"], ["s2", "s1"]]).any()
    model.save(tmp_path / "empty.npz")
    assert not SequentialModel.load(tmp_path / "empty.npz").scores(["s1"]).any()


def test_a_spent_time_budget_stops_after_one_batch():
    log = make_series_log(n_users=20)
    model = SequentialModel.fit(log, ITEMS, epochs=1000, time_budget_s=0.0, batch_size=4, **TINY)
    assert model.epochs_run == 1


def test_sequences_follow_ts_with_ties_in_row_order():
    users = ["b", "a", "b", "a", "a", "b", "c"]
    items = ["s1", "s2", "s3", "gone", "s4", "s5", "s6"]
    log = _log(list(zip(users, items, strict=True)), ts=[5, 2, 1, 0, 2, 5, 0])
    # a: gone (0, dropped), s2 and s4 (both 2, row order); b: s3 (1), s1 and s5 (5); c: 1 item.
    sequences = _user_sequences(log, ITEMS)
    assert [s.tolist() for s in sequences] == [[3, 5], [4, 2, 6]]
    # Without ts, row order.
    assert [s.tolist() for s in _user_sequences(log.drop(["ts"]), ITEMS)] == [[3, 5], [2, 4, 6]]


def test_heavy_users_give_several_windows_but_capped():
    # max_len 3: windows of 4 stepping back 3, so each next item is a target exactly once.
    windows = _windows([np.arange(1, 9), np.array([7, 9])], max_len=3)
    assert windows.tolist() == [[5, 6, 7, 8], [2, 3, 4, 5], [0, 0, 1, 2], [0, 0, 7, 9]]
    assert len(_windows([np.arange(1, 1001)], max_len=3)) == 8


def test_sampled_softmax_learns_the_series_too(monkeypatch):
    monkeypatch.setattr("retrieval.sequential._FULL_SOFTMAX_MAX_ITEMS", 4)
    monkeypatch.setattr("retrieval.sequential._NEGATIVES", 6)
    model = SequentialModel.fit(make_series_log(), ITEMS, epochs=80, **TINY)
    for i in range(len(SERIES)):
        assert _top(model, [SERIES[(i - 1) % 8], SERIES[i]]) == _next(i)


def test_fit_is_seeded_and_leaves_torch_random_state_alone():
    log = make_series_log(n_users=10)
    state = torch.random.get_rng_state()
    first = SequentialModel.fit(log, ITEMS, epochs=3, seed=7, **TINY)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = SequentialModel.fit(log, ITEMS, epochs=3, seed=7, **TINY)
    other = SequentialModel.fit(log, ITEMS, epochs=3, seed=8, **TINY)
    np.testing.assert_array_equal(first.scores(["s1", "s2"]), second.scores(["s1", "s2"]))
    assert not np.array_equal(first.scores(["s1", "s2"]), other.scores(["s1", "s2"]))


def test_fit_rejects_settings_that_have_no_model():
    log = make_series_log(n_users=2)
    with pytest.raises(ValueError, match="must divide dim"):
        SequentialModel.fit(log, ITEMS, max_len=8, dim=10, heads=3, progress=False)
    with pytest.raises(ValueError, match="max_len"):
        SequentialModel.fit(log, ITEMS, max_len=0, progress=False)


def test_sequential_ranker_excludes_the_history_and_falls_back_to_popularity(series_model):
    popularity = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 8], dtype=np.float64)
    ranker = SequentialRanker(series_model, popularity)
    assert ranker.name == "sequential"
    ranked = ranker.rank(["s4", "s5"], 4)
    assert ranked[0] == "s6" and len(ranked) == 4
    assert not {"s4", "s5"} & set(ranked)
    # Everything in the series seen: only the never-watched items are left.
    assert sorted(ranker.rank(SERIES, 5)) == ["x0", "x1"]
    # No usable history: popularity order.
    assert ranker.rank(["unknown"], 4) == ["x0", "x1", "s7", "s6"]


def test_router_scores_are_the_probability_relative_to_the_best_unseen(series_model):
    history = ["s0", "s1"]
    scores = sequential_scores(series_model, history, seen=history, n=3)
    assert scores is not None and scores.top[0] == "s2"
    logits = series_model.scores(history).astype(np.float64)
    unseen = [i for i in ITEMS if i not in history]
    best = max(logits[ITEMS.index(i)] for i in unseen)
    expected = [np.exp(logits[ITEMS.index(i)] - best) for i in unseen]
    np.testing.assert_allclose(scores.of(unseen), expected, rtol=1e-5)
    assert scores.of(["s2"])[0] == 1.0 and list(scores.of(history)) == [0.0, 0.0]
    assert len(scores.top) == 3 and scores.of(["not-an-item"])[0] == 0.0
    assert sequential_scores(series_model, ["not-an-item"], seen=[], n=3) is None


def test_onnx_runtime_scores_as_pytorch_does(series_model, tmp_path):
    series_model.save(tmp_path / "sequential.npz")
    model = SequentialModel.load(tmp_path / "sequential.npz")
    histories = [["s2"], ["s6", "s7"], SERIES, [*SERIES, *SERIES, "s1"], ["nope"], []]
    expected = model.scores_batch(histories)
    model.use_onnx(threads=1)
    assert model.engine == "onnx" and model._session is not None
    got = model.scores_batch(histories)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert not got[4].any() and not got[5].any()
    # The learnt order is the same: each series item is still followed by the next.
    assert _top(model, ["s0", "s1", "s2"]) == "s3"
    # Dropout stays off after the export: two calls give the same scores.
    np.testing.assert_array_equal(model.scores(SERIES), model.scores(SERIES))
    assert not model.network.training


def test_onnx_scores_that_disagree_keep_pytorch(series_model, tmp_path, monkeypatch):
    import retrieval.sequential as sequential

    series_model.save(tmp_path / "sequential.npz")
    model = SequentialModel.load(tmp_path / "sequential.npz")
    expected = model.scores(SERIES)
    monkeypatch.setattr(sequential, "ONNX_MAX_GAP", -1.0)  # no gap is small enough
    with pytest.raises(RuntimeError, match="differ from PyTorch"):
        model.use_onnx()
    assert model.engine == "torch" and model._session is None
    np.testing.assert_array_equal(model.scores(SERIES), expected)
    # The router's choice: auto falls back to PyTorch, onnx refuses to start.
    assert choose_engine(model, "auto") == "torch"
    with pytest.raises(RuntimeError):
        choose_engine(model, "onnx")


def test_the_router_engine_choice(series_model, tmp_path):
    series_model.save(tmp_path / "sequential.npz")
    assert choose_engine(SequentialModel.load(tmp_path / "sequential.npz"), "torch") == "torch"
    assert choose_engine(SequentialModel.load(tmp_path / "sequential.npz"), "auto") == "onnx"
    assert choose_engine(SequentialModel.load(tmp_path / "sequential.npz"), "onnx") == "onnx"
