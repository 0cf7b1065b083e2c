"""`llmrec ingest synthetic`: a dataset folder the app serves without an encoding pass."""

import pyarrow.parquet as pq

from cluster.cli import main
from retrieval.shards import Shard, load_manifest


def test_synthetic_dataset_is_served_as_written(tmp_path):
    out = tmp_path / "synthetic"
    args = ["ingest", "synthetic", "--items", "8000", "--users", "60", "--out", str(out)]
    assert main(args) == 0
    manifest = load_manifest(out / "index")
    assert manifest.n_shards == 4 and manifest.items == 8000
    assert manifest.index_type == "ivfsq"
    shard = Shard.load(out / "index", 0)
    first = shard.item_ids[0]
    _, vector = shard.lookup([first])[first]
    assert shard.search_ids(vector, 5)[0].item_id == first  # an item's own vector finds it
    log = pq.read_table(out / "interactions.parquet")
    users = log["user_id"].to_pylist()
    assert len(set(users)) == 60 and max(users.count(u) for u in set(users)) >= 50  # a heavy tail
    assert {"cf.npz", "als.npz", "ease.npz"} <= {p.name for p in (out / "index").iterdir()}
