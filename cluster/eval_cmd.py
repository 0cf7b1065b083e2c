"""`llmrec eval`: offline quality of the recommendation pipeline against baselines.

Leave-last-out: per user, the last interaction (by time) is the target and the
ones before it the history. The pipeline ranks the whole catalog for that
history (seen items excluded) and is scored by Recall@k, NDCG@k, MRR (over the
top `--depth`), catalog coverage and latency; the baselines (popularity,
item-kNN, ALS, EASE plain and recency-weighted, sequential, content-only) are
computed in the same run on the same split, and the pipeline's NDCG lift over
the best of them is paired by user with a bootstrap interval.

In-process (default), the pipeline is the router core itself over the local
shards, with item-kNN and ALS fit on the training part of the split only, so
nothing of a target leaks. With `--url`, the running service is asked instead
(the history is sent explicitly, never a `user_id`); that is leak-free only
when the service's collaborative models were built without the targets:
`--write-split OUT` writes such a train-only dataset to build and serve.

`--tune` picks the fusion weights and the profile's half-life on a validation
split (the second-to-last interaction, models fit on the log without the last
two), trains a learned fusion (LambdaRank) kept only when, cross-fitted over
the validation users, it beats them by more than the bootstrap interval, and
the LLM's share of the rerank blend on a seeded subsample of validation users,
then writes them to
`index/fusion.json` (and `index/fusion_ltr.txt`), which the router reads at start.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from deployments.evaluation import EvalOptions, ServiceError, evaluate
from loadtest.auth import add_api_key_argument, api_key_from
from retrieval.fusion import FEATURES, FUSION_NAME
from retrieval.split import leave_last_out, write_split

__all__ = ["register"]

console = Console()


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser(
        "eval",
        help="offline quality: Recall/NDCG/MRR/coverage vs baselines on a leave-last-out split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--data", required=True, help="dataset folder with index/ (`llmrec build`)")
    s.add_argument("--split", choices=["leave-last-out"], default="leave-last-out")
    s.add_argument("--k", type=int, default=10, help="cut-off of Recall@k and NDCG@k")
    s.add_argument("--depth", type=int, default=100, help="ranked list length; MRR reads it all")
    s.add_argument("--users", type=int, help="evaluate a seeded sample of this many users")
    s.add_argument("--seed", type=int, default=0, help="seed of every user sample")
    s.add_argument(
        "--url",
        help="evaluate the running service here instead of in-process; leak-free only if its "
        "index was built from `--write-split` output",
    )
    s.add_argument("--concurrency", type=int, default=1, help="--url: requests in flight")
    add_api_key_argument(s)
    s.add_argument("--tune", action="store_true", help="tune fusion and rerank weights first")
    s.add_argument("--fusion-out", help=f"where --tune writes (default: DATA/index/{FUSION_NAME})")
    s.add_argument(
        "--rerank-users",
        type=int,
        default=100,
        help="users (seeded sample) ranked with the LLM reranker, in tuning and evaluation; "
        "the real engine costs ~1 s per user on a CPU; 0 skips the LLM",
    )
    s.add_argument(
        "--explain-users",
        type=int,
        default=20,
        help="users (seeded sample) whose top k are explained; the share that passed "
        "validation is reported; 0 skips",
    )
    s.add_argument(
        "--sequential-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="training time of the sequential model (self-attention over the history), the "
        "pipeline's source and a baseline (default: router.sequential_budget_s, 60); 0 fits none",
    )
    s.add_argument(
        "--attack",
        dest="attack_users",
        type=int,
        nargs="?",
        const=100,
        default=0,
        metavar="USERS",
        help="measure prompt injection through catalog text on USERS (default 100) seeded "
        "users: attack success and clean NDCG with the injection guard off and on",
    )
    s.add_argument("--write-split", metavar="OUT", help="only write the train-only dataset to OUT")
    s.add_argument("--json", help="write the results as JSON here")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from cluster import local

    _, cfg = local.render_serve_config(args.config, data_dir=args.data)
    opts = _options(args)
    data = cfg.data_path
    catalog = pq.read_table(data / "catalog.parquet", columns=["item_id"])
    log = pq.read_table(data / "interactions.parquet", columns=["user_id", "item_id", "ts"])
    split = leave_last_out(log, catalog["item_id"].to_pylist())
    if args.write_split:
        out = write_split(data, Path(args.write_split), split)
        console.print(
            f"wrote {out}: {len(split.train)} training interactions, "
            f"{len(split.targets)} held-out targets ({out / 'heldout.json'}).\n"
            f"Serve it for a leak-free served eval:\n  llmrec build --data {out}\n"
            f"  llmrec up --data {out}\n  llmrec eval --data {args.data} --url URL"
        )
        return 0
    import httpx

    try:
        result = asyncio.run(evaluate(opts, cfg, split, catalog["item_id"].to_pylist()))
    except (ServiceError, httpx.HTTPError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.json}")
    return 0


def _options(args: argparse.Namespace) -> EvalOptions:
    """The flags as `EvalOptions` (a bad combination is a ValueError naming the flags)."""
    names = {f.name for f in dataclasses.fields(EvalOptions)} - {"progress", "api_key"}
    return EvalOptions(
        **{n: getattr(args, n) for n in names},
        api_key=api_key_from(args.api_key),
        progress=not args.no_progress,
    )


def _print(result: dict[str, Any]) -> None:
    k = result["k"]
    table = Table(
        title=f"leave-last-out, {result['users']} users, k={k}, MRR over top {result['depth']} "
        f"({result['mode']})"
    )
    for col in ("ranker", "users", f"Recall@{k}", f"NDCG@{k}", "MRR", "coverage", "p50 ms"):
        table.add_column(col, justify="right" if col != "ranker" else "left")

    def row(name: str, m: dict[str, Any], latency: dict[str, float] | None, style: str = ""):
        table.add_row(
            name,
            str(m["users"]),
            f"{m[f'recall_at_{k}']:.4f}",
            f"{m[f'ndcg_at_{k}']:.4f}",
            f"{m['mrr']:.4f}",
            f"{m['coverage']:.3f}",
            f"{latency['p50']:.1f}" if latency else "",
            style=style,
        )

    row("pipeline (hybrid)", result["metrics"], result["latency_ms"], "bold")
    for name, m in result["baselines"].items():
        row(name, m, m["latency_ms"])
    rr = result.get("rerank") or {}
    if "with" in rr:
        row(f"pipeline, same {rr['users']} users", rr["without"], None)
        row(f"+ LLM rerank (w={rr['weight']})", rr["with"], rr["latency_ms"], "bold")
    console.print(table)
    if "skipped" in rr:
        console.print(f"rerank: skipped ({rr['skipped']})")
    lift_key = f"ndcg_at_{k}_lift"
    vs = result.get("vs_best_baseline")
    for name, key, baseline in (
        ("NDCG", lift_key, "baseline"),
        ("Recall", f"recall_at_{k}_lift", "recall_baseline"),
    ):
        if vs and key in vs:
            low, high = vs[key]["ci"]
            console.print(
                f"pipeline against the best baseline ({vs[baseline]}) in {name}@{k}, paired "
                f"over {vs[key]['users']} users: {vs[key]['mean']:+.4f} "
                f"(95% bootstrap interval {low:+.4f} to {high:+.4f})"
            )
    lift = rr.get(lift_key)
    if lift:
        low, high = lift["ci"]
        cost = rr["latency_ms"]["p50"] - result["latency_ms"]["p50"]
        console.print(
            f"LLM rerank lift in NDCG@{result['k']}, paired over {lift['users']} users: "
            f"{lift['mean']:+.4f} (95% bootstrap interval {low:+.4f} to {high:+.4f}), "
            f"for {cost:+.1f} ms p50 per request (one request at a time)"
        )
    f = result["fusion"]
    console.print(
        "fusion weights: "
        + ", ".join(f"{n}={f[n]}" for n in (*FEATURES, "rerank", "profile_half_life"))
    )
    learned = (result.get("tuning") or {}).get("learned")
    if learned and "skipped" in learned:
        console.print(f"learned fusion: skipped ({learned['skipped']})")
    elif learned:
        held = learned[f"out_of_fold_ndcg_at_{k}"]
        low, high = learned["lift"]["ci"]
        verdict = (
            "kept" if learned["kept"] else "not kept: the interval is not above 0, weights stay"
        )
        console.print(
            f"learned fusion (LambdaRank, {learned['rounds']} rounds, {learned['folds']}-fold "
            f"cross-fitted over {learned['users']} validation users): NDCG@{k} "
            f"{held['learned']:.4f} against the weights' {held['grid']:.4f} out of fold "
            f"(paired lift 95% interval {low:+.4f} to {high:+.4f}), {verdict}"
        )
    elif f.get("learned"):
        console.print(f"learned fusion: {f['learned']} (orders history requests)")
    ex = result.get("explanations") or {}
    if "skipped" in ex:
        console.print(f"explanations: skipped ({ex['skipped']})")
    elif ex:
        console.print(
            f"explanations: {ex['explained']} for {ex['users']} users, "
            f"{ex['grounded_share']:.1%} generated and passed their checks (the rest: template "
            "reasons); by check: " + ", ".join(f"{k} {v}" for k, v in ex.get("checks", {}).items())
        )
        for e in ex["examples"]:
            console.print(f"[bold]user {e['user']}[/] history …{e['history']}")
            for item in e["items"]:
                mark = "✓" if item["grounded"] else "template"
                console.print(f"  {item['title']}: {item['explanation']} [{mark}]")
    if "attack" in result:
        _print_attack(result["attack"], k)


def _print_attack(attack: dict[str, Any], k: int) -> None:
    if "skipped" in attack:
        console.print(f"attack: skipped ({attack['skipped']})")
        return
    table = Table(
        title=f"prompt injection: {attack['requests']} attacked requests, one item outside the "
        f"top {k} each, LLM weight {attack['weight']}"
    )
    for col in ("guard", "success", "95% CI", "control", "repeats", f"NDCG@{k}", f"R@{k}"):
        table.add_column(col, justify="right")
    base = attack["retrieval_only"]
    ndcg, recall = f"ndcg_at_{k}", f"recall_at_{k}"
    table.add_row("no LLM", "", "", "", "", f"{base[ndcg]:.4f}", f"{base[recall]:.4f}")
    for mode, g in attack["guard"].items():
        low, high = g["attack_success_ci95"]
        table.add_row(
            mode,
            f"{g['attack_success']:.1%}",
            f"{low:.1%}–{high:.1%}",
            f"{g['control_promoted']:.1%}",
            f"{g['explanations_repeating_injection']}/{g['explained']}",
            f"{g['clean'][ndcg]:.4f}",
            f"{g['clean'][recall]:.4f}",
        )
    console.print(table)
    console.print(
        "success: the attacked item ends in the final top k; control: the same item without "
        "the attack text does; repeats: explanations of it that repeat the attack's words; "
        f"NDCG/R: the clean reranks of the same {attack['requests']} users"
    )
    for mode, g in attack["guard"].items():
        console.print(
            f"guard {mode}, successes by kind: "
            + ", ".join(f"{n} {v}" for n, v in g["by_kind"].items())
        )
