"""`llmrec eval --url` through the real Serve app equals the in-process evaluation.

The service is built from `write_split` output (collaborative models fit without
the targets), so the served evaluation is leak-free and must score exactly like
the in-process pipeline, which fits the same models on the same training log.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from ray import serve

from cluster.cli import main
from deployments.app import build_app
from retrieval.build import fit_collaborative
from retrieval.split import leave_last_out, write_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train_only(demo_dir, tmp_path_factory):
    """The demo data without each user's last interaction, indexed like `llmrec build` would.

    The catalog is unchanged, so the shards are copied; only the collaborative models
    are fit again, on the training log.
    """
    out = tmp_path_factory.mktemp("train-only")
    split = leave_last_out(pq.read_table(demo_dir / "interactions.parquet"))
    write_split(demo_dir, out, split)
    shutil.copytree(demo_dir / "index", out / "index")
    item_ids = pq.read_table(out / "catalog.parquet", columns=["item_id"])["item_id"].to_pylist()
    fit_collaborative(pq.read_table(out / "interactions.parquet"), item_ids).save(out / "index")
    return out


def _eval(demo_dir, tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    args = ["eval", "--data", str(demo_dir), "--users", "80", "--rerank-users", "0"]
    args += ["--explain-users", "0", "--sequential-budget", "0"]
    args += ["--json", str(out), "--no-progress", *extra]
    assert main(args) == 0
    return json.loads(out.read_text())


def test_served_eval_matches_in_process(ray_cluster, demo_dir, train_only, tmp_path):
    app = build_app({"data_dir": str(train_only), "reranker": {"enabled": False}})
    serve.run(app, name="llmrec-eval", route_prefix="/")
    try:
        served = _eval(demo_dir, tmp_path, "served", "--url", ray_cluster, "--concurrency", "4")
    finally:
        serve.delete("llmrec-eval")
    local = _eval(demo_dir, tmp_path, "local")
    assert served["mode"] == "served" and local["mode"] == "in-process"
    assert served["users"] == local["users"] == 80
    assert served["metrics"] == local["metrics"]
    assert served["baselines"].keys() == local["baselines"].keys()
    assert served["latency_ms"]["p50"] > 0
