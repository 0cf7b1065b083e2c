"""Leave-last-out splits: the target is the last interaction and never reaches training."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.build import fit_collaborative
from retrieval.split import HELDOUT_FILE, leave_last_out, write_split
from tests.factories import make_catalog


def _log(rows):
    users, items, ts = zip(*rows, strict=True)
    return pa.table(
        {"user_id": list(users), "item_id": list(items), "ts": pa.array(ts, pa.int64())}
    )


LOG = _log(
    [
        ("u1", "3", 30),  # rows out of time order on purpose
        ("u1", "1", 10),
        ("u1", "2", 20),
        ("u2", "4", 5),
        ("u2", "5", 5),  # same time as "4": the later row is the last
        ("u3", "1", 1),  # a single interaction: nothing to predict from
        ("u4", "6", 1),
        ("u4", "7", 2),
        ("u4", "6", 3),  # repeats an earlier item: never recommendable, skipped
    ]
)


def test_target_is_the_last_interaction_by_time():
    split = leave_last_out(LOG)
    assert split.targets == {"u1": "3", "u2": "5"}
    assert split.histories == {"u1": ["1", "2"], "u2": ["4"]}
    assert split.skipped == {"single": 1, "repeat": 1}


def test_training_log_holds_no_target():
    split = leave_last_out(LOG)
    train = set(
        zip(split.train["user_id"].to_pylist(), split.train["item_id"].to_pylist(), strict=True)
    )
    for user, target in split.targets.items():
        assert (user, target) not in train
        assert set(split.histories[user]) == {i for u, i in train if u == user}
    assert len(split.train) == len(LOG) - len(split.targets)
    # Skipped users keep all their rows.
    assert ("u3", "1") in train and ("u4", "7") in train


def test_models_fit_on_the_training_log_never_saw_a_target():
    # u1 took 1, 2, 3; u2 took 1, 2. Held out: u1→3, u2→2. Item 3 has no training events.
    log = _log([("u1", "1", 1), ("u1", "2", 2), ("u1", "3", 3), ("u2", "1", 1), ("u2", "2", 2)])
    split = leave_last_out(log)
    knn, als, ease, _ = fit_collaborative(split.train, ["1", "2", "3"])
    assert knn.popularity.tolist() == [2.0, 1.0, 0.0]
    assert [item for item, _ in knn.recommend(["1"], 5)] == ["2"]
    assert knn.recommend(["1", "2"], 5, exclude=["1", "2"]) == []
    # ALS learnt no factor for an item without training events: it scores exactly 0.
    assert als.scores(["1", "2"])[2] == 0.0
    # EASE models only items someone took: item 3 is not among them and scores 0.
    assert ease.scores(["1", "2"])[2] == 0.0 and "3" not in ease.position


def test_validation_split_holds_out_the_second_to_last():
    split = leave_last_out(LOG)
    val = leave_last_out(split.train)
    assert val.targets == {"u1": "2"}
    assert val.histories == {"u1": ["1"]}


def test_catalog_filter_drops_unknown_items():
    split = leave_last_out(LOG, catalog_ids=["1", "2", "4", "5"])
    assert split.targets == {"u1": "2", "u2": "5"}


def test_write_split_is_a_train_only_dataset(tmp_path):
    catalog = make_catalog(8)
    from retrieval.catalog import write_dataset

    full = _log([("u1", "1", 1), ("u1", "2", 2), ("u2", "3", 1), ("u2", "4", 2)])
    full = full.append_column("event", pa.array(["click"] * 4)).append_column(
        "weight", pa.array([1.0] * 4, pa.float32())
    )
    write_dataset(tmp_path / "full", catalog, full)
    split = leave_last_out(pq.read_table(tmp_path / "full" / "interactions.parquet"))
    out = write_split(tmp_path / "full", tmp_path / "train", split)
    train = pq.read_table(out / "interactions.parquet")
    assert sorted(zip(train["user_id"].to_pylist(), train["item_id"].to_pylist(), strict=True)) == [
        ("u1", "1"),
        ("u2", "3"),
    ]
    assert pq.read_table(out / "catalog.parquet").num_rows == 8
    assert json.loads((out / HELDOUT_FILE).read_text())["targets"] == {"u1": "2", "u2": "4"}
