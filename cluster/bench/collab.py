"""`llmrec bench collab`: what the collaborative sources cost a history request, in process.

For a seeded sample of the dataset's users (`--data`, default the config's;
each user's latest `router.max_history` items the history, all of them seen),
it times what the router does per request for each model, as
`retrieval.user_scores` does it: the normalised scores and the proposals, then
the scores of a pool of every model's proposals plus `retriever.candidates`
other catalog items (standing in for the nearest items). It gives p50/p99 per
model and for the three together, and the recall of ALS's proposals against
an exact search of the item factors (the share of the exact best
`router.als_candidates` it proposes), with the index the config picks
(`router.als_exact_max_items`, `router.als_ef_search`: `--set` overrides them).
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from retrieval.config import AppConfig

__all__ = ["register", "run_collab_bench"]

console = Console()

MODELS = ("cf", "als", "ease")


def run_collab_bench(cfg: AppConfig, *, users: int = 300, seed: int = 0) -> dict[str, Any]:
    """Per-request milliseconds (p50, p99) per model and in all, and ALS's recall; see the
    module docstring. Needs the collaborative models in `cfg.index_path`."""
    import pyarrow.parquet as pq

    from retrieval.build import load_als, load_cf, load_ease
    from retrieval.collab import FactorIndex
    from retrieval.profiles import histories_from_log, recency_weights
    from retrieval.user_scores import als_scores, ease_scores, item_knn_scores

    cf, als, ease = (load(cfg.index_path) for load in (load_cf, load_als, load_ease))
    if cf is None or als is None or ease is None:
        raise FileNotFoundError(f"no collaborative models in {cfg.index_path}: llmrec build")
    rc = cfg.router
    t = time.perf_counter()
    index = FactorIndex(
        als.item_factors, exact_max_items=rc.als_exact_max_items, ef_search=rc.als_ef_search
    )
    index_s = time.perf_counter() - t
    exact = (
        index if index.exact else FactorIndex(als.item_factors, exact_max_items=len(als.item_ids))
    )
    log = pq.read_table(
        cfg.data_path / "interactions.parquet", columns=["user_id", "item_id", "ts"]
    )
    histories = histories_from_log(*(log[c].to_pylist() for c in ("user_id", "item_id", "ts")))
    rng = random.Random(seed)
    sample = rng.sample(sorted(histories), min(users, len(histories)))
    n_other = cfg.retriever.candidates

    ms: dict[str, list[float]] = {name: [] for name in (*MODELS, "total")}
    recalls = []
    for user in sample:
        seen = histories[user]
        history = seen[-rc.max_history :]
        took = {}
        t = time.perf_counter()
        scored = {"cf": item_knn_scores(cf, history, seen, rc.cf_candidates)}
        took["cf"] = time.perf_counter() - t
        t = time.perf_counter()
        scored["als"] = als_scores(als, index, history, seen, rc.als_candidates)
        took["als"] = time.perf_counter() - t
        t = time.perf_counter()
        weights = recency_weights(len(history), rc.ease_half_life)
        scored["ease"] = ease_scores(ease, history, weights, seen, rc.ease_candidates)
        took["ease"] = time.perf_counter() - t
        proposed = [i for s in scored.values() if s is not None for i in s.top]
        pool = list(dict.fromkeys(proposed + rng.sample(cf.item_ids, n_other)))
        for name, scores in scored.items():
            t = time.perf_counter()
            if scores is not None:
                scores.of(pool)
            took[name] += time.perf_counter() - t
        for name in MODELS:
            ms[name].append(took[name] * 1000.0)
        ms["total"].append(sum(took.values()) * 1000.0)
        truth = als_scores(als, exact, history, seen, rc.als_candidates)
        if truth is not None and truth.top and scored["als"] is not None:
            recalls.append(len(set(scored["als"].top) & set(truth.top)) / len(truth.top))
    return {
        "data": str(cfg.data_path),
        "items": len(cf.item_ids),
        "users": len(sample),
        "als_index": "exact" if index.exact else f"hnsw ef_search={rc.als_ef_search}",
        "als_indexed_items": len(index),
        "als_index_build_s": round(index_s, 2),
        "als_recall": round(float(np.mean(recalls)), 4) if recalls else None,
        "ms": {
            name: {
                "p50": round(float(np.percentile(v, 50)), 3),
                "p99": round(float(np.percentile(v, 99)), 3),
            }
            for name, v in ms.items()
        },
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "collab",
        help="the collaborative sources' cost per history request, in process, and ALS recall",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--data", type=Path, help="dataset folder (default: the config's)")
    p.add_argument("--users", type=int, default=300, help="users sampled, one request each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a router setting (e.g. --set als_exact_max_items=0)",
    )
    p.add_argument("--json", help="write the result as JSON here")
    p.set_defaults(func=cmd_bench_collab)


def cmd_bench_collab(args: argparse.Namespace) -> int:
    from cluster import local

    router = dict(item.split("=", 1) for item in args.set)
    _, cfg = local.render_serve_config(
        args.config, data_dir=args.data, overrides={"router": router}
    )
    result = run_collab_bench(cfg, users=args.users, seed=args.seed)
    table = Table(title=f"collaborative scores per history request: {result['data']}")
    for col in ("model", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, v in result["ms"].items():
        table.add_row(name, str(v["p50"]), str(v["p99"]))
    console.print(table)
    console.print(
        f"{result['items']} items, {result['users']} users; ALS index {result['als_index']} "
        f"over {result['als_indexed_items']} items (built in {result['als_index_build_s']} s), "
        f"recall of its proposals against exact {result['als_recall']}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.json}")
    return 0
