"""Offline evaluation of the recommendation pipeline against baselines (`llmrec eval`).

Leave-last-out: per user, the last interaction (by time) is the target and the
ones before it the history. The pipeline ranks the whole catalog for that
history (seen items excluded) and is scored by Recall@k, NDCG@k, MRR (over the
top `depth`), catalog coverage and latency; the baselines (popularity,
item-kNN, ALS, EASE plain and recency-weighted, sequential, content-only) are
computed in the same run on the same split, every model fit on its training
part; the pipeline's NDCG lift over the best of them is paired by user.

In-process (default), the pipeline is the router core itself over the local
shards, searched with the config's own settings, with item-kNN and ALS fit on
the training part of the split only, so nothing of a target leaks. With a
`url`, the running service is asked instead (the history is sent explicitly,
never a `user_id`).

`tune` picks the fusion weights on a validation split (the second-to-last
interaction, models fit on the log without the last two), trains the learned
fusion there (kept only when it beats the weights on held-out validation
users, `retrieval.ltr.tune_learned_fusion`), and the LLM's share of the
rerank blend on a seeded subsample of validation users, then writes them to
`index/fusion.json` (and `index/fusion_ltr.txt`), which the router reads at start.

    result = asyncio.run(evaluate(EvalOptions(k=10), cfg, split, item_ids))
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from rich.console import Console
from tqdm import tqdm

from deployments.attack_eval import attack_eval
from deployments.reranker.core import RerankerCore
from deployments.reranker.prompts import Candidate, PromptContext
from deployments.router.core import RouterCore
from deployments.router.schemas import RecommendRequest
from retrieval.build import Collaborative, fit_collaborative
from retrieval.config import SEARCH_KNOBS, AppConfig, resolve_path
from retrieval.evaluate import (
    PROFILE_HALF_LIFE_GRID,
    AlsRanker,
    ContentRanker,
    EaseRanker,
    ItemKNNRanker,
    PopularityRanker,
    RecentEaseRanker,
    RerankHead,
    SequentialRanker,
    rank_all,
    rank_all_async,
    rerank_ndcg_by_weight,
    rerank_ndcg_per_user,
    sample_users,
    tune_fusion,
    tune_rerank_weight,
)
from retrieval.fusion import FUSION_NAME, FusionWeights, load_fusion, save_fusion
from retrieval.ltr import tune_learned_fusion
from retrieval.metrics import (
    latency_summary,
    paired_bootstrap,
    per_user_ndcg,
    per_user_recall,
    score_rankings,
)
from retrieval.shards import Found, Hit, Shard, load_manifest
from retrieval.split import Split, leave_last_out

if TYPE_CHECKING:
    import httpx

__all__ = ["EvalOptions", "ServiceError", "evaluate"]

console = Console()


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What `evaluate` measures and how (the `llmrec eval` flags of the same names)."""

    k: int = 10
    """Cut-off of Recall@k and NDCG@k."""
    depth: int = 100
    """Ranked list length; MRR reads it all."""
    split: str = "leave-last-out"
    users: int | None = None
    """Evaluate a seeded sample of this many users (None: all)."""
    seed: int = 0
    """Seed of every user sample."""
    url: str | None = None
    """Ask the running service here instead of the in-process pipeline."""
    concurrency: int = 1
    """With `url`: requests in flight."""
    api_key: str | None = dataclasses.field(default=None, repr=False)
    """With `url`: sent as `Authorization: Bearer <key>` (kept out of the repr)."""
    tune: bool = False
    """Tune the fusion and rerank weights on the validation split first."""
    fusion_out: str | None = None
    """Where tuning writes (default: the index's fusion.json)."""
    rerank_users: int = 100
    """Users (seeded sample) ranked with the LLM reranker; 0 skips the LLM."""
    explain_users: int = 20
    """Users (seeded sample) whose top k are explained; 0 skips."""
    attack_users: int = 0
    """Users (seeded sample) whose candidates get a prompt-injection attack (`attack_eval`),
    reranked with the injection guard off and on; 0 skips."""
    sequential_budget: float | None = None
    """Seconds the sequential model may train (`retrieval.sequential`), for the pipeline's
    source and its baseline alike; None: `router.sequential_budget_s`, as `llmrec build`;
    0 fits none."""
    progress: bool = True
    """Progress bars and the engine spinner."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.depth < self.k:
            raise ValueError("need 1 <= k <= depth (--k, --depth)")
        if self.sequential_budget is not None and self.sequential_budget < 0:
            raise ValueError("--sequential-budget must be >= 0 seconds")
        if self.url and self.tune:
            raise ValueError("--tune runs in-process; drop --url (then serve the tuned index)")
        if self.url and self.attack_users:
            raise ValueError("--attack runs in-process (it edits candidates); drop --url")


_EVAL_DEADLINE_MS = 120_000
_ATTACKS_EXPLAINED = 24  # attacked requests whose attacked item is also explained (3 per kind)
_MAX_SENT_HISTORY = 1000  # the API's limit on `history`


class ServiceError(RuntimeError):
    """The service under evaluation answered something other than 200."""


def _service_client(opts: EvalOptions) -> httpx.AsyncClient:
    """The client of a served eval: `opts.url`, its API key on every request."""
    import httpx

    return httpx.AsyncClient(
        base_url=opts.url or "",
        headers={"authorization": f"Bearer {opts.api_key}"} if opts.api_key else {},
        timeout=_EVAL_DEADLINE_MS / 1000,
    )


class _LocalShard:
    """A loaded shard behind the router's async `ShardClient` interface."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    async def search_ids(self, vector, k, exclude, categories, also, rows_for=0) -> Found:
        return self.shard.find(
            vector, k, exclude=exclude, categories=categories, also=also, rows_for=rows_for
        )

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
        self, models: Collaborative, fusion: FusionWeights, *, with_llm: bool = False
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
            cf=models.cf,
            als=models.als,
            ease=models.ease,
            sequential=models.sequential,
            fusion=fusion,
        )

    def history_ids(self, history: Sequence[str]) -> list[str]:
        """The history the router puts in a prompt (deduplicated, most recent kept)."""
        ids = list(dict.fromkeys(history))[-self.cfg.router.max_history :]
        return [i for i in ids if i in self.rows]

    def reranker(self, weight: float, **settings: Any) -> RerankerCore:
        """A `RerankerCore` on the shared engine whose LLM share of the blend is `weight`
        (and other `settings` of the reranker config changed)."""
        config = self.cfg.reranker.model_copy(update={"rerank_weight": weight, **settings})
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


async def evaluate(
    opts: EvalOptions, cfg: AppConfig, split: Split, item_ids: list[str]
) -> dict[str, Any]:
    progress = opts.progress
    world = _load_world(cfg)
    users = sample_users(split.users, opts.users, opts.seed)
    if (opts.rerank_users > 0 or opts.explain_users > 0 or opts.attack_users > 0) and not opts.url:
        _start_engine(world, progress)
    try:
        tuning: dict[str, Any] | None = None
        if opts.tune:
            fusion, tuning = await _tune(opts, world, split, item_ids)
            path = Path(opts.fusion_out) if opts.fusion_out else cfg.index_path / FUSION_NAME
            save_fusion(path, fusion)
            console.print(f"tuned fusion weights → {path}")
        else:
            stored = load_fusion(cfg.index_path) if cfg.router.use_tuned_fusion else None
            fusion = stored or FusionWeights.from_config(cfg.router)
        models = _fit(opts, cfg, split.train, item_ids)
        result: dict[str, Any] = {
            "k": opts.k,
            "users": len(users),
            "split": opts.split,
            "depth": opts.depth,
            "mode": "served" if opts.url else "in-process",
            "search": world.shards[0].settings.model_dump(include=SEARCH_KNOBS),
            "fusion": fusion.to_json(),
        }
        if tuning is not None:
            result["tuning"] = tuning
        n_items = len(item_ids)
        if opts.url:
            rankings, seconds = await _served_rankings(opts, split, users)
        else:
            core = world.core(models, fusion)

            async def rank(user: str) -> list[str]:
                answer = await core.recommend(_request(split.histories[user], opts.depth))
                return [i.item_id for i in answer.items]

            rankings, seconds = await rank_all_async(
                rank, users, desc="pipeline", progress=progress
            )
        metrics = score_rankings(rankings, split.targets, opts.k, n_items)
        result["metrics"] = metrics.to_json()
        result["latency_ms"] = latency_summary(seconds)

        result["baselines"] = {}
        baseline_rankings: dict[str, dict[str, list[str]]] = {}
        pop = models.cf.popularity
        for ranker in (
            PopularityRanker(models.cf),
            ItemKNNRanker(models.cf),
            AlsRanker(models.als, pop),
            EaseRanker(models.ease, pop),
            RecentEaseRanker(models.ease, pop, half_life=cfg.router.ease_half_life),
            ContentRanker(
                item_ids,
                np.stack([world.vectors[i] for i in item_ids]),
                pop,
                half_life=fusion.profile_half_life or cfg.router.history_half_life,
                max_history=cfg.router.max_history,
            ),
            *([SequentialRanker(models.sequential, pop)] if models.sequential else []),
        ):
            ranked, secs = rank_all(ranker, users, split.histories, opts.depth, progress=progress)
            entry = score_rankings(ranked, split.targets, opts.k, n_items).to_json()
            entry["latency_ms"] = latency_summary(secs)
            result["baselines"][ranker.name] = entry
            baseline_rankings[ranker.name] = ranked
        result["vs_best_baseline"] = _versus_best(opts, split, rankings, baseline_rankings, result)

        result["rerank"] = await _rerank_eval(opts, world, split, users, rankings, models, fusion)
        result["explanations"] = await _explain_eval(opts, world, split, users, models, fusion)
        if opts.attack_users > 0:
            result["attack"] = await _attack_eval(opts, world, split, users, models, fusion)
        return result
    finally:
        if world.engine is not None:
            world.engine.shutdown()


def _fit(opts: EvalOptions, cfg: AppConfig, train: pa.Table, item_ids: list[str]) -> Collaborative:
    """The collaborative models `llmrec build` fits, on `train` only; the sequential model
    gets `--sequential-budget` seconds (default: the config's, as the build)."""
    budget = opts.sequential_budget
    return fit_collaborative(
        train,
        item_ids,
        sequential_budget_s=cfg.router.sequential_budget_s if budget is None else budget,
        progress=opts.progress,
    )


def _versus_best(
    opts: EvalOptions,
    split: Split,
    rankings: dict[str, list[str]],
    baselines: dict[str, dict[str, list[str]]],
    result: dict[str, Any],
) -> dict[str, Any]:
    """The pipeline's NDCG@k lift over the best baseline by NDCG@k, and its Recall@k lift
    over the best by Recall@k, each paired by user with its bootstrap interval: a lift whose
    interval excludes 0 is one the users support."""
    out: dict[str, Any] = {}
    for metric, per_user, named in (
        ("ndcg", per_user_ndcg, "baseline"),
        ("recall", per_user_recall, "recall_baseline"),
    ):
        key = f"{metric}_at_{opts.k}"
        best = max(baselines, key=lambda name: result["baselines"][name][key])
        users = [u for u in rankings if u in baselines[best]]
        mine = per_user({u: rankings[u] for u in users}, split.targets, opts.k)
        theirs = per_user({u: baselines[best][u] for u in users}, split.targets, opts.k)
        out[named] = best
        out[f"{key}_lift"] = paired_bootstrap(
            [theirs[u] for u in users], [mine[u] for u in users], seed=opts.seed
        )
    return out


async def _served_rankings(
    opts: EvalOptions, split: Split, users: list[str], **flags: Any
) -> tuple[dict[str, list[str]], list[float]]:
    async with _service_client(opts) as client:

        async def rank(user: str) -> list[str]:
            body = _request(split.histories[user], opts.depth, **flags).model_dump(
                exclude_none=True
            )
            r = await client.post("/v1/recommend", json=body)
            if r.status_code != 200:
                raise ServiceError(f"{opts.url} answered {r.status_code}: {r.text[:300]}")
            return [i["item_id"] for i in r.json()["items"]]

        return await rank_all_async(
            rank,
            users,
            desc="served",
            concurrency=opts.concurrency,
            progress=opts.progress,
        )


async def _tune(
    opts: EvalOptions, world: _World, split: Split, item_ids: list[str]
) -> tuple[FusionWeights, dict[str, Any]]:
    """Fusion weights and profile half-life by grid search, then the learned fusion and the
    rerank weight, on the validation split."""
    progress = opts.progress
    val = leave_last_out(split.train, item_ids)
    val_users = sample_users(val.users, opts.users, opts.seed)
    core = world.core(_fit(opts, world.cfg, val.train, item_ids), FusionWeights())

    async def pools_for(half_life: float) -> dict[str, tuple[list[str], np.ndarray]]:
        """Every validation user's candidate pool with a profile of this half-life."""
        core.fusion = FusionWeights(profile_half_life=half_life)
        pools: dict[str, tuple[list[str], np.ndarray]] = {}

        async def pool(user: str) -> list[str]:
            entries = await core.candidate_pool(_request(val.histories[user], opts.depth))
            pools[user] = ([e.item_id for e in entries], np.asarray([e.features for e in entries]))
            return []

        desc = f"val pools, half-life {half_life:g}"
        await rank_all_async(pool, val_users, desc=desc, progress=progress)
        return pools

    # The profile's half-life changes the ANN candidates and their cosine: a pool set per value,
    # the weight grid over each, the best pair kept.
    best: tuple[float, FusionWeights, list, dict] | None = None
    by_half_life: dict[str, float] = {}
    for half_life in sorted({*PROFILE_HALF_LIFE_GRID, world.cfg.router.history_half_life}):
        pools = await pools_for(half_life)
        weights, table = tune_fusion(pools, val.targets, opts.k, base=core.fusion)
        score = max(v for _, v in table)
        by_half_life[f"{half_life:g}"] = round(score, 6)
        if best is None or score > best[0]:
            best = (score, weights, table, pools)
    assert best is not None
    _, fusion, grid, pools = best
    history_lens = {u: len(world.history_ids(val.histories[u])) for u in pools}
    learned, learned_report = tune_learned_fusion(
        pools, val.targets, history_lens, opts.k, base=fusion, seed=opts.seed
    )
    fusion = dataclasses.replace(fusion, learned=learned)
    ranked_grid = sorted(grid, key=lambda g: -g[1])
    tuning: dict[str, Any] = {
        "split": "validation: second-to-last interaction, models fit without the last two",
        "users": len(val_users),
        "grid_points": len(grid),
        f"val_ndcg_at_{opts.k}_by_profile_half_life": by_half_life,
        "profile_half_life": fusion.profile_half_life,
        f"val_ndcg_at_{opts.k}": round(ranked_grid[0][1], 6),
        "top": [
            {"weights": [float(x) for x in w], f"ndcg_at_{opts.k}": round(v, 6)}
            for w, v in ranked_grid[:5]
        ],
        "learned": learned_report,
    }
    if world.engine is not None and opts.rerank_users > 0:
        core.fusion = fusion
        rr_users = sample_users(val_users, opts.rerank_users, opts.seed)
        heads = await _rerank_heads(world, core, val, rr_users, opts.depth, progress)
        per_user = rerank_ndcg_per_user(heads, val.targets, opts.k)
        weight, lift = tune_rerank_weight(per_user, seed=opts.seed)
        by_weight = rerank_ndcg_by_weight(per_user)
        fusion = dataclasses.replace(fusion, rerank=weight)
        tuning["rerank"] = {
            "users": len(rr_users),
            f"val_ndcg_at_{opts.k}_by_weight": {str(w): round(v, 6) for w, v in by_weight.items()},
            # The best weight's lift over 0, paired by user; served only when above 0.
            f"val_ndcg_at_{opts.k}_lift_of_best": lift,
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
    opts: EvalOptions,
    world: _World,
    split: Split,
    users: list[str],
    plain: dict[str, list[str]],
    models: Collaborative,
    fusion: FusionWeights,
) -> dict[str, Any]:
    """Pipeline with and without the LLM rerank on the same seeded user sample."""
    if opts.rerank_users <= 0:
        return {"skipped": "--rerank-users 0"}
    sample = sample_users(users, opts.rerank_users, opts.seed)
    weight = fusion.rerank if fusion.rerank is not None else world.cfg.reranker.rerank_weight
    n_items = len(world.rows)
    # A served eval reranks with whatever weight the service loaded.
    out: dict[str, Any] = {"users": len(sample), "weight": "service's" if opts.url else weight}
    out["without"] = score_rankings(
        {u: plain[u] for u in sample}, split.targets, opts.k, n_items
    ).to_json()
    if opts.url:
        ranked, seconds = await _served_rankings(opts, split, sample, rerank=True)
    elif world.engine is None:
        return {**out, "skipped": world.engine_error or "no LLM"}
    else:
        core = world.core(models, fusion, with_llm=True)
        reranked_count = 0

        async def rank(user: str) -> list[str]:
            nonlocal reranked_count
            answer = await core.recommend(_request(split.histories[user], opts.depth, rerank=True))
            reranked_count += answer.reranked
            return [i.item_id for i in answer.items]

        ranked, seconds = await rank_all_async(
            rank, sample, desc="reranked", progress=opts.progress
        )
        out["reranked_answers"] = reranked_count
    if not opts.url and world.engine is not None:
        # The LLM's effect at every blend weight on this sample (weight 0 = retrieval order).
        plain_core = world.core(models, dataclasses.replace(fusion, rerank=None))
        heads = await _rerank_heads(world, plain_core, split, sample, opts.depth, opts.progress)
        by_weight = rerank_ndcg_by_weight(rerank_ndcg_per_user(heads, split.targets, opts.k))
        out[f"ndcg_at_{opts.k}_by_weight"] = {str(w): round(v, 6) for w, v in by_weight.items()}
    out["with"] = score_rankings(ranked, split.targets, opts.k, n_items).to_json()
    # The LLM's lift, paired by user: its NDCG@k minus the same user's without it.
    before = per_user_ndcg({u: plain[u] for u in sample}, split.targets, opts.k)
    after = per_user_ndcg(ranked, split.targets, opts.k)
    users_both = [u for u in sample if u in after]
    out[f"ndcg_at_{opts.k}_lift"] = paired_bootstrap(
        [before[u] for u in users_both], [after[u] for u in users_both], seed=opts.seed
    )
    out["latency_ms"] = latency_summary(seconds)
    return out


async def _attack_eval(
    opts: EvalOptions,
    world: _World,
    split: Split,
    users: list[str],
    models: Collaborative,
    fusion: FusionWeights,
) -> dict[str, Any]:
    """Prompt-injection attacks on a seeded user sample, the injection guard off and on."""
    if world.engine is None:
        return {"skipped": world.engine_error or "no LLM"}
    weight = fusion.rerank if fusion.rerank is not None else world.cfg.reranker.rerank_weight
    plain = world.core(models, dataclasses.replace(fusion, rerank=None))

    async def ranking(user: str):
        return await plain.recommend(_request(split.histories[user], opts.depth))

    return await attack_eval(
        rankings=ranking,
        rows=world.rows,
        history_ids=world.history_ids,
        scorers={
            "off": world.reranker(weight, injection_guard=False),
            "on": world.reranker(weight, injection_guard=True),
        },
        weight=weight,
        split=split,
        users=users,
        n_users=opts.attack_users,
        k=opts.k,
        explain_users=_ATTACKS_EXPLAINED,
        seed=opts.seed,
        progress=opts.progress,
    )


def _candidate(hit: Hit) -> Candidate:
    return Candidate(item_id=hit.item_id, title=hit.title, text=hit.text, categories=hit.categories)


async def _explain_eval(
    opts: EvalOptions,
    world: _World,
    split: Split,
    users: list[str],
    models: Collaborative,
    fusion: FusionWeights,
) -> dict[str, Any]:
    """Explain the final top k of a seeded user sample; share that passed validation."""
    if opts.explain_users <= 0:
        return {"skipped": "--explain-users 0"}
    sample = sample_users(users, opts.explain_users, opts.seed + 1)
    rerank = fusion.rerank != 0.0
    flags: list[bool] = []
    checks: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    seconds: list[float] = []
    if opts.url:
        client = _service_client(opts)
    elif world.engine is None:
        return {"skipped": world.engine_error or "no LLM"}
    else:
        core = world.core(models, fusion, with_llm=True)
    bar = tqdm(sample, desc=f"{'explained':>12}", unit="user", disable=(not opts.progress))
    try:
        for user in bar:
            history = split.histories[user]
            req = _request(history, opts.k, rerank=rerank, explain=True)
            t = time.perf_counter()
            if opts.url:
                r = await client.post("/v1/recommend", json=req.model_dump(exclude_none=True))
                if r.status_code != 200:
                    raise ServiceError(f"{opts.url} answered {r.status_code}: {r.text[:300]}")
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
        if opts.url:
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
