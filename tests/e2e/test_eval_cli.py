"""`llmrec eval` in-process on the demo data: tuning, baselines, the real LLM rerank and explain."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from deployments.reranker.prompts import display_title
from retrieval.evaluate import RERANK_WEIGHT_GRID
from retrieval.fusion import FEATURES
from retrieval.split import leave_last_out

pytestmark = pytest.mark.slow

MODELS_DIR = Path("~/.cache/llmrec/models").expanduser()
METRICS = ("recall_at_10", "ndcg_at_10", "mrr", "coverage")


def test_eval_tunes_and_the_hybrid_beats_every_single_source(demo_dir, tmp_path):
    from retrieval.models import prepare_llm

    prepare_llm(MODELS_DIR, progress=False)
    out, fusion = tmp_path / "eval.json", tmp_path / "fusion.json"
    code = main(
        [
            "eval",
            "--data", str(demo_dir),
            "--k", "10",
            "--tune",
            "--fusion-out", str(fusion),
            "--rerank-users", "3",
            "--explain-users", "1",
            "--attack", "2",
            "--sequential-budget", "5",
            "--json", str(out),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    r = json.loads(out.read_text())
    # Every user with two interactions or more has one held out; one-click users have none.
    log = pq.read_table(demo_dir / "interactions.parquet")
    clicks = Counter(log["user_id"].to_pylist())
    testable = sum(n >= 2 for n in clicks.values())
    assert testable < len(clicks)  # the demo has cold users
    assert r["k"] == 10 and r["users"] == testable and r["mode"] == "in-process"
    baselines = {"popularity", "item_knn", "als", "ease", "ease_recent", "sequential", "content"}
    assert set(r["baselines"]) == baselines
    for m in (r["metrics"], *r["baselines"].values()):
        assert all(0.0 <= m[key] <= 1.0 for key in METRICS) and m["users"] == testable
    # The tuned pipeline leads every source it does not mostly consist of; EASE is its
    # heaviest feature on this data, and the two stay within a few percent of each other.
    others = [b["ndcg_at_10"] for n, b in r["baselines"].items() if not n.startswith("ease")]
    assert r["metrics"]["ndcg_at_10"] > max(others)
    ease = max(r["baselines"][n]["ndcg_at_10"] for n in ("ease", "ease_recent"))
    assert r["metrics"]["ndcg_at_10"] > 0.9 * ease
    # The attack eval ran on the real engine, guard off and on, on the same two requests.
    attack = r["attack"]
    assert attack["requests"] == 2 and set(attack["guard"]) == {"off", "on"}
    for g in attack["guard"].values():
        assert 0.0 <= g["attack_success"] <= 1.0 and g["explained"] == 2
        assert g["clean"]["users"] == 2

    # The tuned weights were written where asked (never into the shared index) and used.
    saved = json.loads(fusion.read_text())
    assert {k: saved[k] for k in FEATURES} == {k: r["fusion"][k] for k in FEATURES}
    assert not (demo_dir / "index" / "fusion.json").exists()
    # The learned fusion is kept only with a held-out lift whose interval is above 0.
    learned = r["tuning"]["learned"]
    assert learned["kept"] == (learned["lift"]["ci"][0] > 0)
    assert saved["learned"] == ("fusion_ltr.txt" if learned["kept"] else None)
    assert (tmp_path / "fusion_ltr.txt").exists() == learned["kept"]
    # The pipeline against its best single source, paired by user.
    vs = r["vs_best_baseline"]
    best = max(r["baselines"], key=lambda n: r["baselines"][n]["ndcg_at_10"])
    assert vs["baseline"] == best and vs["ndcg_at_10_lift"]["users"] == testable
    gap = r["metrics"]["ndcg_at_10"] - r["baselines"][best]["ndcg_at_10"]
    assert vs["ndcg_at_10_lift"]["mean"] == pytest.approx(gap, abs=1e-5)
    best = max(r["baselines"], key=lambda n: r["baselines"][n]["recall_at_10"])
    assert vs["recall_baseline"] == best
    gap = r["metrics"]["recall_at_10"] - r["baselines"][best]["recall_at_10"]
    assert vs["recall_at_10_lift"]["mean"] == pytest.approx(gap, abs=1e-5)
    rerank = r["tuning"]["rerank"]
    assert saved["rerank"] == rerank["weight"] and saved["rerank"] in RERANK_WEIGHT_GRID
    by_weight = rerank["val_ndcg_at_10_by_weight"]
    assert by_weight[str(float(saved["rerank"]))] >= by_weight["0.0"]  # never lowers val NDCG
    assert r["rerank"]["users"] == 3 and "with" in r["rerank"]
    lift = r["rerank"]["ndcg_at_10_lift"]  # paired over the same 3 users
    assert lift["users"] == 3
    assert lift["ci"][0] <= lift["mean"] <= lift["ci"][1]
    gain = r["rerank"]["with"]["ndcg_at_10"] - r["rerank"]["without"]["ndcg_at_10"]
    assert lift["mean"] == pytest.approx(gain, abs=1e-5)  # the tables' values are rounded

    # Explanations: one user's top 10, each naming only the request's or the item's titles.
    ex = r["explanations"]
    assert ex["explained"] == 10 and 0.0 <= ex["grounded_share"] <= 1.0
    catalog = pq.read_table(demo_dir / "catalog.parquet", columns=["item_id", "title"])
    titles = dict(zip(catalog["item_id"].to_pylist(), catalog["title"].to_pylist(), strict=True))
    split = leave_last_out(log)
    for example in ex["examples"]:
        # Reasons quote titles as shown to people: "Heat (1995)" reads "Heat".
        history = {display_title(titles[i]) for i in split.histories[example["user"]]}
        for item in example["items"]:
            assert item["explanation"]
            quoted = set(re.findall(r'"([^"]+)"', item["explanation"]))
            assert quoted <= history | {display_title(item["title"])}, item["explanation"]


def test_eval_searches_with_the_settings_the_app_is_deployed_with(demo_dir, tmp_path):
    import yaml

    root = Path(__file__).resolve().parents[2]
    serve_config = yaml.safe_load((root / "ray_config.yaml").read_text())
    args = serve_config["applications"][0]["args"]
    args.setdefault("retriever", {}).update({"nprobe": 3, "refine_k_factor": 7.0})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(serve_config))

    def searched_with(*config_args: str) -> dict:
        out = tmp_path / "eval.json"
        code = main(
            [
                *config_args,
                "eval", "--data", str(demo_dir), "--users", "20",
                "--rerank-users", "0", "--explain-users", "0", "--sequential-budget", "0",
                "--json", str(out), "--no-progress",
            ]
        )  # fmt: skip
        assert code == 0
        return json.loads(out.read_text())["search"]

    changed = searched_with("--config", str(config))
    assert changed["nprobe"] == 3 and changed["refine_k_factor"] == 7.0
    assert searched_with()["nprobe"] == 16  # ray_config.yaml's own
