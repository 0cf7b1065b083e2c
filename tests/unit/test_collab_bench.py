"""`llmrec bench collab` on a small dataset: it times every model and measures ALS recall."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.bench import collab as bench_collab
from retrieval.build import fit_collaborative
from retrieval.config import AppConfig, RouterConfig


def test_bench_times_each_model_and_measures_als_recall(tmp_path):
    rng = np.random.default_rng(0)
    item_ids = [str(i) for i in range(400)]
    users = np.repeat(np.arange(60), 10)
    log = pa.table(
        {
            "user_id": [f"u{u}" for u in users],
            "item_id": [item_ids[i] for i in rng.integers(0, 400, len(users))],
            "ts": np.tile(np.arange(10), 60),
        }
    )
    pq.write_table(log, tmp_path / "interactions.parquet")
    (tmp_path / "index").mkdir()
    fit_collaborative(log, item_ids).save(tmp_path / "index")

    exact = bench_collab.run_collab_bench(AppConfig(data_dir=str(tmp_path)), users=20)
    assert exact["users"] == 20 and exact["als_index"] == "exact" and exact["als_recall"] == 1.0
    assert set(exact["ms"]) == {"cf", "als", "ease", "total"}
    assert all(v["p50"] > 0 for v in exact["ms"].values())
    approx = AppConfig(data_dir=str(tmp_path), router=RouterConfig(als_exact_max_items=50))
    result = bench_collab.run_collab_bench(approx, users=20)
    assert result["als_index"].startswith("hnsw") and result["als_recall"] >= 0.9


def test_bench_is_registered_under_llmrec_bench():
    from cluster.cli import parser

    args = parser().parse_args(["bench", "collab", "--set", "als_exact_max_items=0"])
    assert args.func is bench_collab.cmd_bench_collab and args.set == ["als_exact_max_items=0"]
