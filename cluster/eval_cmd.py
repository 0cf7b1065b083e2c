"""`llmrec eval`: offline quality of the recommendation pipeline against baselines.

Leave-last-out: per user, the last interaction (by time) is the target and the
ones before it the history. The pipeline ranks the whole catalog for that
history (seen items excluded) and is scored by Recall@k, NDCG@k, MRR (over the
top `--depth`), catalog coverage and latency; the baselines (popularity,
item-kNN, ALS, content-only) are computed in the same run on the same split.

In-process (default), the pipeline is the router core itself over the local
shards, with item-kNN and ALS fit on the training part of the split only, so
nothing of a target leaks. With `--url`, the running service is asked instead
(the history is sent explicitly, never a `user_id`); that is leak-free only
when the service's collaborative models were built without the targets:
`--write-split OUT` writes such a train-only dataset to build and serve.

`--tune` picks the fusion weights on a validation split (the second-to-last
interaction, models fit on the log without the last two) and the LLM's share
of the rerank blend on a seeded subsample of validation users, then writes
them to `index/fusion.json`, which the router reads at start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from deployments.reranker.core import RerankerCore
from deployments.reranker.prompts import Candidate, PromptContext
from deployments.router.core import RouterCore
from deployments.router.schemas import RecommendRequest
from retrieval.build import fit_collaborative
from retrieval.collab import AlsModel, ItemKNN
from retrieval.config import SEARCH_KNOBS, AppConfig, resolve_path
from retrieval.evaluate import (
    AlsRanker,
    ContentRanker,
    ItemKNNRanker,
    PopularityRanker,
    RerankHead,
    rank_all,
    rank_all_async,
    rerank_ndcg_by_weight,
    sample_users,
    tune_fusion,
    tune_rerank_weight,
)
from retrieval.fusion import FUSION_NAME, FusionWeights, load_fusion, save_fusion
from retrieval.metrics import latency_summary, score_rankings
from retrieval.shards import Hit, Shard, load_manifest
from retrieval.split import Split, leave_last_out, write_split

__all__ = ["register"]

console = Console()

_EVAL_DEADLINE_MS = 120_000
_MAX_SENT_HISTORY = 1000  # the API's limit on `history`


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
    s.add_argument("--write-split", metavar="OUT", help="only write the train-only dataset to OUT")
    s.add_argument("--json", help="write the results as JSON here")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from cluster import local

    _, cfg = local.render_serve_config(args.config, data_dir=Path(args.data))
    if args.k < 1 or args.depth < args.k:
        raise ValueError("need 1 <= --k <= --depth")
    if args.url and args.tune:
        raise ValueError("--tune runs in-process; drop --url (then serve the tuned index)")
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
        result = asyncio.run(_evaluate(args, cfg, split, catalog["item_id"].to_pylist()))
    except (ServiceError, httpx.HTTPError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.json}")
    return 0


class ServiceError(RuntimeError):
    """The service under evaluation answered something other than 200."""


class _LocalShard:
    """A loaded shard behind the router's async `ShardClient` interface."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    async def search(self, vector, k, exclude, categories) -> list[Hit]:
        return self.shard.search(vector, k, exclude=exclude, categories=categories)

    async def lookup(self, item_ids):
        return self.shard.lookup(item_ids)


class _LazyEncoder:
    """The configured sentence encoder, loaded on the first query (eval sends none)."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self.encoder = None

    async def __call__(self, text: str) -> np.ndarray:
        if self.encoder is None:
            from retrieval.encoder import SentenceEncoder
            from retrieval.models import resolve_encoder

            enc = self.cfg.encoder
            self.encoder = SentenceEncoder(
                resolve_encoder(enc.model), model_id=enc.model, device=enc.device
            )
        return self.encoder.encode([text])[0]


@dataclasses.dataclass
class _World:
    """What every evaluation step shares: config, shards, catalog rows, the LLM if any."""

    cfg: AppConfig
    shards: list[Shard]
    rows: dict[str, Hit]
    vectors: dict[str, np.ndarray]
    encode: _LazyEncoder
    engine: Any = None
    engine_error: str | None = None

    def core(
        self, cf: ItemKNN, als: AlsModel, fusion: FusionWeights, *, with_llm: bool = False
    ) -> RouterCore:
        """The router core over the local shards, with the LLM reranker when asked and
        available (the core passes it the fusion's rerank weight, as in serving)."""
        reranker = None
        if with_llm and self.engine is not None:
            reranker = self.reranker(self.cfg.reranker.rerank_weight)
        return RouterCore(
            self.cfg,
            encode=self.encode,
            shards=[_LocalShard(s) for s in self.shards],
            reranker=reranker,
            cf=cf,
            als=als,
            fusion=fusion,
        )

    def history_ids(self, history: Sequence[str]) -> list[str]:
        """The history the router puts in a prompt (deduplicated, most recent kept)."""
        ids = list(dict.fromkeys(history))[-self.cfg.router.max_history :]
        return [i for i in ids if i in self.rows]

    def reranker(self, weight: float) -> RerankerCore:
        """A `RerankerCore` on the shared engine whose LLM share of the blend is `weight`."""
        config = self.cfg.reranker.model_copy(update={"rerank_weight": weight})
        return RerankerCore(config, resolve_path(self.cfg.models_dir), engine=self.engine)


def _load_world(cfg: AppConfig) -> _World:
    manifest = load_manifest(cfg.index_path)
    # The search-time knobs the app is deployed with, so the eval measures what is served.
    settings = cfg.retriever
    shards = [Shard.load(cfg.index_path, s, settings=settings) for s in range(manifest.n_shards)]
    rows: dict[str, Hit] = {}
    vectors: dict[str, np.ndarray] = {}
    for shard in shards:
        for item_id, (hit, vector) in shard.lookup(shard.item_ids).items():
            rows[item_id], vectors[item_id] = hit, vector
    return _World(cfg, shards, rows, vectors, _LazyEncoder(cfg))


def _start_engine(world: _World, progress: bool) -> None:
    """Start the vLLM engine once; on failure remember why and go on without it."""
    from deployments.reranker.engine import VllmEngine
    from retrieval.models import resolve_llm

    cfg = world.cfg
    with (
        console.status("starting the vLLM engine …", spinner="dots")
        if progress
        else (contextlib.nullcontext())
    ):
        try:
            model = resolve_llm(cfg.reranker.model, resolve_path(cfg.models_dir))
            world.engine = VllmEngine(cfg.reranker, model)
        except (RuntimeError, OSError, ValueError) as exc:
            world.engine_error = f"{type(exc).__name__}: {exc}"
            console.print(f"[yellow]LLM not available, rerank/explain skipped:[/] {exc}")


def _request(history: Sequence[str], depth: int, **flags: Any) -> RecommendRequest:
    return RecommendRequest(
        history=list(history)[-_MAX_SENT_HISTORY:],
        k=depth,
        exclude_seen=True,
        deadline_ms=_EVAL_DEADLINE_MS,
        **flags,
    )


async def _evaluate(
    args: argparse.Namespace, cfg: AppConfig, split: Split, item_ids: list[str]
) -> dict[str, Any]:
    progress = not args.no_progress
    world = _load_world(cfg)
    users = sample_users(split.users, args.users, args.seed)
    if (args.rerank_users > 0 or args.explain_users > 0) and not args.url:
        _start_engine(world, progress)
    try:
        tuning: dict[str, Any] | None = None
        if args.tune:
            fusion, tuning = await _tune(args, world, split, item_ids)
            path = Path(args.fusion_out) if args.fusion_out else cfg.index_path / FUSION_NAME
            save_fusion(path, fusion)
            console.print(f"tuned fusion weights → {path}")
        else:
            stored = load_fusion(cfg.index_path) if cfg.router.use_tuned_fusion else None
            fusion = stored or FusionWeights.from_config(cfg.router)
        cf, als = fit_collaborative(split.train, item_ids)
        result: dict[str, Any] = {
            "k": args.k,
            "users": len(users),
            "split": args.split,
            "depth": args.depth,
            "mode": "served" if args.url else "in-process",
            "search": world.shards[0].settings.model_dump(include=SEARCH_KNOBS),
            "fusion": fusion.to_json(),
        }
        if tuning is not None:
            result["tuning"] = tuning
        n_items = len(item_ids)
        if args.url:
            rankings, seconds = await _served_rankings(args, split, users)
        else:
            core = world.core(cf, als, fusion)

            async def rank(user: str) -> list[str]:
                answer = await core.recommend(_request(split.histories[user], args.depth))
                return [i.item_id for i in answer.items]

            rankings, seconds = await rank_all_async(
                rank, users, desc="pipeline", progress=progress
            )
        metrics = score_rankings(rankings, split.targets, args.k, n_items)
        result["metrics"] = metrics.to_json()
        result["latency_ms"] = latency_summary(seconds)

        result["baselines"] = {}
        pop = cf.popularity
        for ranker in (
            PopularityRanker(cf),
            ItemKNNRanker(cf),
            AlsRanker(als, pop),
            ContentRanker(
                item_ids,
                np.stack([world.vectors[i] for i in item_ids]),
                pop,
                half_life=cfg.router.history_half_life,
                max_history=cfg.router.max_history,
            ),
        ):
            ranked, secs = rank_all(ranker, users, split.histories, args.depth, progress=progress)
            entry = score_rankings(ranked, split.targets, args.k, n_items).to_json()
            entry["latency_ms"] = latency_summary(secs)
            result["baselines"][ranker.name] = entry

        result["rerank"] = await _rerank_eval(args, world, split, users, rankings, cf, als, fusion)
        result["explanations"] = await _explain_eval(args, world, split, users, cf, als, fusion)
        return result
    finally:
        if world.engine is not None:
            world.engine.shutdown()


async def _served_rankings(
    args: argparse.Namespace, split: Split, users: list[str], **flags: Any
) -> tuple[dict[str, list[str]], list[float]]:
    import httpx

    async with httpx.AsyncClient(base_url=args.url, timeout=_EVAL_DEADLINE_MS / 1000) as client:

        async def rank(user: str) -> list[str]:
            body = _request(split.histories[user], args.depth, **flags).model_dump(
                exclude_none=True
            )
            r = await client.post("/v1/recommend", json=body)
            if r.status_code != 200:
                raise ServiceError(f"{args.url} answered {r.status_code}: {r.text[:300]}")
            return [i["item_id"] for i in r.json()["items"]]

        return await rank_all_async(
            rank,
            users,
            desc="served",
            concurrency=args.concurrency,
            progress=not args.no_progress,
        )


async def _tune(
    args: argparse.Namespace, world: _World, split: Split, item_ids: list[str]
) -> tuple[FusionWeights, dict[str, Any]]:
    """Fusion weights by grid search, then the rerank weight, on the validation split."""
    progress = not args.no_progress
    val = leave_last_out(split.train, item_ids)
    val_users = sample_users(val.users, args.users, args.seed)
    cf, als = fit_collaborative(val.train, item_ids)
    core = world.core(cf, als, FusionWeights())

    async def pool(user: str) -> list[str]:
        entries = await core.candidate_pool(_request(val.histories[user], args.depth))
        pools[user] = ([e.item_id for e in entries], np.asarray([e.features for e in entries]))
        return []

    pools: dict[str, tuple[list[str], np.ndarray]] = {}
    await rank_all_async(pool, val_users, desc="val pools", progress=progress)
    fusion, grid = tune_fusion(pools, val.targets, args.k)
    ranked_grid = sorted(grid, key=lambda g: -g[1])
    tuning: dict[str, Any] = {
        "split": "validation: second-to-last interaction, models fit without the last two",
        "users": len(val_users),
        "grid_points": len(grid),
        f"val_ndcg_at_{args.k}": round(ranked_grid[0][1], 6),
        "top": [
            {"weights": [float(x) for x in w], f"ndcg_at_{args.k}": round(v, 6)}
            for w, v in ranked_grid[:5]
        ],
    }
    if world.engine is not None and args.rerank_users > 0:
        core.fusion = fusion
        rr_users = sample_users(val_users, args.rerank_users, args.seed)
        heads = await _rerank_heads(world, core, val, rr_users, args.depth, progress)
        by_weight = rerank_ndcg_by_weight(heads, val.targets, args.k)
        weight = tune_rerank_weight(by_weight)
        fusion = dataclasses.replace(fusion, rerank=weight)
        tuning["rerank"] = {
            "users": len(rr_users),
            f"val_ndcg_at_{args.k}_by_weight": {str(w): round(v, 6) for w, v in by_weight.items()},
            "weight": weight,
        }
    else:
        tuning["rerank"] = {"skipped": world.engine_error or "--rerank-users 0"}
    fusion = dataclasses.replace(fusion, tuned=tuning)
    return fusion, tuning


async def _rerank_heads(
    world: _World,
    core: RouterCore,
    split: Split,
    users: list[str],
    depth: int,
    progress: bool,
) -> dict[str, RerankHead]:
    """Per user: the fused ranking and the LLM's normalised scores of its lettered head."""
    scorer = world.reranker(1.0)  # at weight 1 the blend is the min-max normalised LLM score
    n_head = world.cfg.reranker.max_candidates
    heads: dict[str, RerankHead] = {}

    async def one(user: str) -> list[str]:
        answer = await core.recommend(_request(split.histories[user], depth))
        items = answer.items
        head = items[:n_head]
        ids = world.history_ids(split.histories[user])
        context = PromptContext(
            history_titles=[world.rows[i].title for i in ids],
            history_categories=[world.rows[i].categories for i in ids],
            query=None,
            candidates=[_candidate(world.rows[i.item_id]) for i in head],
        )
        outcome = await scorer.rerank(context, [i.score for i in head])
        llm = dict(outcome.order)
        heads[user] = RerankHead(
            ranked=[i.item_id for i in items],
            retrieval=[i.score for i in head],
            llm=[llm[j] for j in range(len(head))],
        )
        return []

    await rank_all_async(one, users, desc="LLM scores", progress=progress)
    return heads


async def _rerank_eval(
    args: argparse.Namespace,
    world: _World,
    split: Split,
    users: list[str],
    plain: dict[str, list[str]],
    cf: ItemKNN,
    als: AlsModel,
    fusion: FusionWeights,
) -> dict[str, Any]:
    """Pipeline with and without the LLM rerank on the same seeded user sample."""
    if args.rerank_users <= 0:
        return {"skipped": "--rerank-users 0"}
    sample = sample_users(users, args.rerank_users, args.seed)
    weight = fusion.rerank if fusion.rerank is not None else world.cfg.reranker.rerank_weight
    n_items = len(world.rows)
    # A served eval reranks with whatever weight the service loaded.
    out: dict[str, Any] = {"users": len(sample), "weight": "service's" if args.url else weight}
    out["without"] = score_rankings(
        {u: plain[u] for u in sample}, split.targets, args.k, n_items
    ).to_json()
    if args.url:
        ranked, seconds = await _served_rankings(args, split, sample, rerank=True)
    elif world.engine is None:
        return {**out, "skipped": world.engine_error or "no LLM"}
    else:
        core = world.core(cf, als, fusion, with_llm=True)
        reranked_count = 0

        async def rank(user: str) -> list[str]:
            nonlocal reranked_count
            answer = await core.recommend(_request(split.histories[user], args.depth, rerank=True))
            reranked_count += answer.reranked
            return [i.item_id for i in answer.items]

        ranked, seconds = await rank_all_async(
            rank, sample, desc="reranked", progress=not args.no_progress
        )
        out["reranked_answers"] = reranked_count
    if not args.url and world.engine is not None:
        # The LLM's effect at every blend weight on this sample (weight 0 = retrieval order).
        plain_core = world.core(cf, als, dataclasses.replace(fusion, rerank=None))
        heads = await _rerank_heads(
            world, plain_core, split, sample, args.depth, not args.no_progress
        )
        by_weight = rerank_ndcg_by_weight(heads, split.targets, args.k)
        out[f"ndcg_at_{args.k}_by_weight"] = {str(w): round(v, 6) for w, v in by_weight.items()}
    out["with"] = score_rankings(ranked, split.targets, args.k, n_items).to_json()
    out["latency_ms"] = latency_summary(seconds)
    return out


def _candidate(hit: Hit) -> Candidate:
    return Candidate(item_id=hit.item_id, title=hit.title, text=hit.text, categories=hit.categories)


async def _explain_eval(
    args: argparse.Namespace,
    world: _World,
    split: Split,
    users: list[str],
    cf: ItemKNN,
    als: AlsModel,
    fusion: FusionWeights,
) -> dict[str, Any]:
    """Explain the final top k of a seeded user sample; share that passed validation."""
    if args.explain_users <= 0:
        return {"skipped": "--explain-users 0"}
    sample = sample_users(users, args.explain_users, args.seed + 1)
    rerank = fusion.rerank != 0.0
    flags: list[bool] = []
    checks: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    seconds: list[float] = []
    if args.url:
        import httpx

        client = httpx.AsyncClient(base_url=args.url, timeout=_EVAL_DEADLINE_MS / 1000)
    elif world.engine is None:
        return {"skipped": world.engine_error or "no LLM"}
    else:
        core = world.core(cf, als, fusion, with_llm=True)
    bar = tqdm(sample, desc=f"{'explained':>12}", unit="user", disable=args.no_progress)
    try:
        for user in bar:
            history = split.histories[user]
            req = _request(history, args.k, rerank=rerank, explain=True)
            t = time.perf_counter()
            if args.url:
                r = await client.post("/v1/recommend", json=req.model_dump(exclude_none=True))
                if r.status_code != 200:
                    raise ServiceError(f"{args.url} answered {r.status_code}: {r.text[:300]}")
                items = r.json()["items"]
                # Served answers say where each reason came from, not which check failed.
                sources = [i.get("explanation_source") for i in items]
                grounded = [None if src is None else src == "llm" for src in sources]
                for src in filter(None, sources):
                    verdict = "ok" if src == "llm" else "template"
                    checks[verdict] = checks.get(verdict, 0) + 1
            else:
                answer = await core.answer(req)
                items = [i.model_dump() for i in answer.response.items]
                grounded = answer.grounded
                for e in answer.explanations:
                    if e is not None:
                        checks[e.check] = checks.get(e.check, 0) + 1
            seconds.append(time.perf_counter() - t)
            flags.extend(g for g in grounded if g is not None)
            if len(examples) < 3:
                examples.append(
                    {
                        "user": user,
                        "history": [world.rows[i].title for i in history[-5:]],
                        "target": world.rows[split.targets[user]].title,
                        "items": [
                            {
                                "item_id": i["item_id"],
                                "title": i["title"],
                                "explanation": i["explanation"],
                                "grounded": g,
                            }
                            for i, g in zip(items[:3], grounded[:3], strict=True)
                        ],
                    }
                )
    finally:
        bar.close()
        if args.url:
            await client.aclose()
    return {
        "users": len(sample),
        "explained": len(flags),
        "grounded_share": round(sum(flags) / len(flags), 4) if flags else 0.0,
        # Why generated reasons were replaced by templates ("ok": generated and passed).
        "checks": dict(sorted(checks.items(), key=lambda kv: -kv[1])),
        "latency_ms": latency_summary(seconds),
        "examples": examples,
    }


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
    f = result["fusion"]
    console.print(
        "fusion weights: "
        + ", ".join(f"{n}={f[n]}" for n in ("ann", "item_knn", "als", "popularity", "rerank"))
    )
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
