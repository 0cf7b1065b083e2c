"""`llmrec bench reranker`: the LLM stage alone, real vLLM engine, settings against settings.

Each variant starts its own engine (`RerankerCore` in this process, no Ray),
warms it up, then runs requests made from the dataset's catalog: a history
of 10 items and 20 candidates, one rerank and the explanations of the top
10, as the router asks for them, each with the default deadline. At each
concurrency it reports rerank, explain and total latency (p50/p99) of the
requests that got both stages, how many the reranker refused (the router
would answer them degraded), the share of generated explanations, rerank
prompt tokens and the prefix-cache hit rate of each stage, from vLLM's own
per-request counts. Then the recovery
check: the idle latency (default deadline), a burst of requests whose
deadline passes, and the latency of the next request, as a ratio to idle.

Variants:
- `before`: the settings of the previous release, and no deadline in the
  engine (its requests run to the end): bfloat16 whatever the CPU,
  vLLM's own thread binding (1 of 2 cores), 128-token KV blocks, each
  explanation in a prompt of its own, no bound on the work in flight, and
  work left running when its caller gives up (what the Serve hop did before
  it cancelled).
- `current`: the defaults (`dtype: auto`, every core, 32-token blocks,
  explanations sharing the rerank prompt, expired work aborted).

Prints a table; `--json FILE` writes `{"cpu", "isa_env", "variants": [...]}`.
The CPU kind and flags are recorded: on a CPU without native bf16 `before`
runs bfloat16 in emulation. `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`
narrows PyTorch and oneDNN to AVX2 kernels (an approximation of such a CPU;
pass `--set dtype=float32` to `current`, what `auto` picks there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from deployments.errors import DeadlineExceeded, QueueFull
from deployments.reranker.core import RerankerCore
from deployments.reranker.prompts import Candidate, PromptContext
from retrieval.config import AppConfig, RerankerConfig, resolve_path
from retrieval.hardware import cpu_flags, cpu_kind
from retrieval.metrics import percentile, percentile_ms

__all__ = ["VARIANTS", "register", "run_bench"]

console = Console()

_HISTORY, _CANDIDATES, _EXPLAINED = 10, 20, 10
_ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


@dataclass(frozen=True)
class Variant:
    """Reranker settings plus how the bench drives them."""

    name: str
    overrides: dict[str, Any]
    shared_prefix: bool = True
    abort_expired: bool = True


VARIANTS = {
    "before": Variant(
        "before",
        {
            "dtype": "bfloat16",
            "cpu_cores": "vllm",
            "block_size": 128,
            "explain_attempts": 1,
            "max_pending": 1024,  # no bound on the work in flight
        },
        shared_prefix=False,
        abort_expired=False,
    ),
    "current": Variant("current", {}),
}


@dataclass
class _Run:
    rerank_s: list[float] = field(default_factory=list)
    explain_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    generated: int = 0
    explained: int = 0
    degraded: int = 0


def _contexts(data_dir: Path, n: int, seed: int) -> list[PromptContext]:
    """`n` requests: a random 10-item history and 20 random candidates from the catalog."""
    rows = pq.read_table(data_dir / "catalog.parquet").to_pylist()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        picked = rng.sample(rows, _HISTORY + _CANDIDATES)
        history, candidates = picked[:_HISTORY], picked[_HISTORY:]
        out.append(
            PromptContext(
                history_titles=[r["title"] for r in history],
                history_categories=[list(r["categories"] or []) for r in history],
                query=None,
                candidates=[
                    Candidate(str(r["item_id"]), r["title"], r["text"] or "", list(r["categories"]))
                    for r in candidates
                ],
            )
        )
    return out


async def _request(
    core: RerankerCore, context: PromptContext, variant: Variant, deadline: float | None
) -> tuple[float, float, int, list[str]]:
    scores = [1.0 - i / 40 for i in range(len(context.candidates))]
    t0 = time.perf_counter()
    outcome = await core.rerank(context, scores, None, deadline, _EXPLAINED)
    t1 = time.perf_counter()
    top = [i for i, _ in outcome.order[:_EXPLAINED]]
    if variant.shared_prefix:
        lettered = PromptContext(
            context.history_titles,
            context.history_categories,
            context.query,
            context.candidates[: outcome.lettered],
        )
        inside = [t for t in top if t < outcome.lettered]
        explained = await core.explain(lettered, inside, outcome.item_text_chars, deadline)
    else:  # each item in a prompt of its own: history plus that one item
        solo = [
            PromptContext(
                context.history_titles, context.history_categories, None, [context.candidates[t]]
            )
            for t in top
        ]
        parts = await asyncio.gather(
            *(core.explain(c, [0], outcome.item_text_chars, deadline) for c in solo)
        )
        explained = [e for part in parts for e in part]
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, outcome.prompt_tokens, [e.source for e in explained]


async def _level(
    core: RerankerCore,
    contexts: list[PromptContext],
    variant: Variant,
    concurrency: int,
    deadline_s: float | None,
) -> _Run:
    """`contexts` at `concurrency`, each with the default deadline (if any), as the router
    sends them."""
    run = _Run()
    queue = list(contexts)

    async def worker() -> None:
        while queue:
            context = queue.pop()
            t = time.perf_counter()
            try:
                deadline = None if deadline_s is None else time.time() + deadline_s
                rerank_s, explain_s, tokens, sources = await _request(
                    core, context, variant, deadline
                )
            except (DeadlineExceeded, QueueFull):
                run.degraded += 1  # the router would answer without the LLM stages
                continue
            run.total_s.append(time.perf_counter() - t)
            run.rerank_s.append(rerank_s)
            run.explain_s.append(explain_s)
            run.prompt_tokens.append(tokens)
            run.explained += len(sources)
            run.generated += sources.count("llm")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run


async def _recovery(
    core: RerankerCore,
    contexts: list[PromptContext],
    variant: Variant,
    burst: int,
    burst_deadline_s: float,
) -> dict[str, float]:
    """Idle latency, a burst whose deadline passes, then the next request's latency.

    The probes run without a deadline and with one explanation round, so that
    idle and after-burst requests do the same work and only what the burst
    left behind in the engine can tell them apart.
    """
    probe_config, core.config = core.config, core.config.model_copy(update={"explain_attempts": 1})
    idle = []
    for context in contexts[:3]:
        t = time.perf_counter()
        await _request(core, context, variant, None)
        idle.append(time.perf_counter() - t)

    async def expiring(context: PromptContext) -> None:
        deadline = time.time() + burst_deadline_s if variant.abort_expired else None
        await _request(core, context, variant, deadline)

    tasks = [asyncio.ensure_future(expiring(c)) for c in contexts[3 : 3 + burst]]
    _, pending = await asyncio.wait(tasks, timeout=burst_deadline_s)
    if variant.abort_expired:
        for task in pending:
            task.cancel()  # the caller is gone; its work is aborted
    t = time.perf_counter()
    try:
        await _request(core, contexts[-1], variant, None)
    finally:
        after = time.perf_counter() - t
        core.config = probe_config
    await asyncio.gather(*tasks, return_exceptions=True)
    idle_s = percentile(sorted(idle), 50)
    return {
        "idle_ms": round(idle_s * 1000, 1),
        "after_burst_ms": round(after * 1000, 1),
        "ratio": round(after / idle_s, 2),
        "burst": burst,
        "burst_deadline_ms": round(burst_deadline_s * 1000),
    }


def _ms(values: list[float], q: float) -> float:
    return round(percentile_ms(values, q), 1)


async def _variant(
    variant: Variant,
    config: RerankerConfig,
    models_dir: Path,
    contexts: list[PromptContext],
    concurrency: list[int],
    per_level: int,
    deadline_s: float,
) -> dict[str, Any]:
    started = time.perf_counter()
    core = RerankerCore(config, models_dir)
    try:
        warm = await core.warm_up()
        ready_s = time.perf_counter() - started
        levels = []
        fresh = iter(contexts)  # every request its own user: no prefix cached across requests
        for c in concurrency:
            before = core.describe()
            batch = [next(fresh) for _ in range(max(per_level, 2 * c))]
            # `before` had no deadline in the engine: its work ran to the end, answered or not.
            level_deadline = deadline_s if variant.abort_expired else None
            run = await _level(core, batch, variant, c, level_deadline)
            after = core.describe()
            levels.append(
                {
                    "concurrency": c,
                    "requests": len(batch),
                    "degraded": run.degraded,
                    "rerank_p50_ms": _ms(run.rerank_s, 50),
                    "rerank_p99_ms": _ms(run.rerank_s, 99),
                    "explain_p50_ms": _ms(run.explain_s, 50),
                    "explain_p99_ms": _ms(run.explain_s, 99),
                    "total_p50_ms": _ms(run.total_s, 50),
                    "total_p99_ms": _ms(run.total_s, 99),
                    "rerank_prompt_tokens": round(float(np.mean(run.prompt_tokens or [0])), 1),
                    "generated_share": round(run.generated / max(run.explained, 1), 3),
                    "rerank_cache_hit": _hit(before["rerank"], after["rerank"]),
                    "explain_cache_hit": _hit(before["explain"], after["explain"]),
                }
            )
        recovery = await _recovery(core, [next(fresh) for _ in range(24)], variant, 20, 1.5)
        described = core.describe()
    finally:
        core.shutdown()
    return {
        "variant": variant.name,
        "settings": {
            **variant.overrides,
            "shared_prefix": variant.shared_prefix,
            "abort_expired": variant.abort_expired,
        },
        "engine": {k: described[k] for k in ("dtype", "dtype_reason") if k in described},
        "cpu_threads_bind": described.get("cpu_threads_bind"),
        "ready_s": round(ready_s, 1),
        "warm_up": warm,
        "levels": levels,
        "recovery": recovery,
    }


def _hit(before: dict[str, float], after: dict[str, float]) -> float:
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    return round((after["cached_tokens"] - before["cached_tokens"]) / prompt, 3) if prompt else 0.0


def run_bench(
    cfg: AppConfig,
    variants: list[Variant],
    *,
    concurrency: list[int],
    per_level: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Every variant in turn on one machine; the result `print_table` and `--json` take."""
    models_dir = resolve_path(cfg.models_dir)
    n = sum(max(per_level, 2 * c) for c in concurrency) + 24
    contexts = _contexts(cfg.data_path, n, seed)
    flags = cpu_flags()
    result: dict[str, Any] = {
        "cpu": {
            "kind": cpu_kind(flags),
            "flags": sorted(f for f in flags if "avx" in f or "amx" in f),
        },
        "isa_env": {
            k: os.environ[k]
            for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
            if k in os.environ
        },
        "deadline_ms": cfg.router.default_deadline_ms,
        "variants": [],
    }
    for variant in variants:
        config = cfg.reranker.model_copy(update=variant.overrides)
        console.print(
            f"[bold]{variant.name}[/]: starting the engine ({variant.overrides or 'defaults'})"
        )
        result["variants"].append(
            asyncio.run(
                _variant(
                    variant,
                    RerankerConfig.model_validate(config.model_dump()),
                    models_dir,
                    contexts,
                    concurrency,
                    per_level,
                    cfg.router.default_deadline_ms / 1000,
                )
            )
        )
    return result


def print_table(result: dict[str, Any]) -> None:
    table = Table(title=f"LLM stage, CPU {result['cpu']['kind']} {result['isa_env'] or ''}")
    for col in (
        "variant",
        "dtype",
        "c",
        "rerank p50/p99 ms",
        "explain p50/p99 ms",
        "total p50/p99 ms",
        "prompt tok",
        "cache hit r/e",
        "generated",
        "degraded",
    ):
        table.add_column(col, justify="left" if col in ("variant", "dtype") else "right")
    for v in result["variants"]:
        for lv in v["levels"]:
            table.add_row(
                v["variant"],
                v["engine"].get("dtype", ""),
                str(lv["concurrency"]),
                f"{lv['rerank_p50_ms']:.0f} / {lv['rerank_p99_ms']:.0f}",
                f"{lv['explain_p50_ms']:.0f} / {lv['explain_p99_ms']:.0f}",
                f"{lv['total_p50_ms']:.0f} / {lv['total_p99_ms']:.0f}",
                f"{lv['rerank_prompt_tokens']:.0f}",
                f"{lv['rerank_cache_hit']:.2f} / {lv['explain_cache_hit']:.2f}",
                f"{lv['generated_share']:.0%}",
                f"{lv['degraded']}/{lv['requests']}",
            )
    console.print(table)
    for v in result["variants"]:
        r = v["recovery"]
        console.print(
            f"{v['variant']}: ready in {v['ready_s']:.0f}s; recovery after {r['burst']} requests "
            f"expiring at {r['burst_deadline_ms']} ms: next request {r['after_burst_ms']:.0f} ms "
            f"vs idle {r['idle_ms']:.0f} ms = {r['ratio']:.2f}x"
        )


async def _http_recovery(url: str, burst: int, burst_deadline_ms: int) -> dict[str, Any]:
    """The recovery check through a deployed service: the router, Serve's hops and the engine."""
    import httpx

    body = {"k": 10, "rerank": True, "explain": True}

    async def timed(client: httpx.AsyncClient, extra: dict[str, Any]) -> tuple[float, dict]:
        t = time.perf_counter()
        r = await client.post("/v1/recommend", json={**body, **extra})
        return time.perf_counter() - t, (
            r.json() if r.status_code == 200 else {"status": r.status_code}
        )

    probes = [{"user_id": str(u)} for u in (11, 12, 13)]
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        # Each probe once unmeasured, so idle and after-burst probes alike find their
        # prompts in the prefix cache, however often the service has seen these users.
        for probe in probes:
            await timed(client, probe)
        idle = [await timed(client, probe) for probe in probes]
        shots = [
            timed(client, {"user_id": str(100 + u), "deadline_ms": burst_deadline_ms})
            for u in range(burst)
        ]
        answers = await asyncio.gather(*shots)
        after_s, after = await timed(client, probes[0])
    idle_s = percentile(sorted(s for s, _ in idle), 50)
    return {
        "idle_ms": round(idle_s * 1000, 1),
        "after_burst_ms": round(after_s * 1000, 1),
        "ratio": round(after_s / idle_s, 2),
        "burst": burst,
        "burst_deadline_ms": burst_deadline_ms,
        "burst_degraded": sum(1 for _, a in answers if a.get("degraded") or "status" in a),
        "idle_degraded": [a.get("degraded") for _, a in idle],
        "after_degraded": after.get("degraded"),
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reranker",
        help="the LLM stage: rerank/explain latency, prompt tokens, prefix-cache hits, recovery",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--config", type=Path, default=Path("ray_config.yaml"))
    p.add_argument("--data", help="dataset folder (default: the config's data_dir)")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["before", "current"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=8, help="requests per level (at least 2x c)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a reranker setting of the `current` variant (e.g. dtype=float32)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--url",
        help="instead: the recovery check against this running service, over HTTP "
        "(users 11-14 at the default deadline, a burst of 20 with a 1.5 s deadline)",
    )
    p.add_argument("--json", help="write the results as JSON here")
    p.set_defaults(func=cmd_bench_reranker)


def cmd_bench_reranker(args: argparse.Namespace) -> int:
    if args.url:
        result = asyncio.run(_http_recovery(args.url, 20, 1500))
        console.print(
            f"recovery through {args.url}: idle {result['idle_ms']:.0f} ms, after "
            f"{result['burst']} requests expiring at {result['burst_deadline_ms']} ms "
            f"({result['burst_degraded']} degraded): {result['after_burst_ms']:.0f} ms = "
            f"{result['ratio']:.2f}x; degraded idle {result['idle_degraded']}, after "
            f"{result['after_degraded']}"
        )
        _write_json(args.json, result)
        return 0
    from cluster import local

    _, cfg = local.render_serve_config(args.config, data_dir=args.data or None)
    overrides = dict(item.split("=", 1) for item in args.set)
    variants = [
        Variant(v.name, {**v.overrides, **overrides}, v.shared_prefix, v.abort_expired)
        if name == "current"
        else v
        for name, v in ((n, VARIANTS[n]) for n in args.variants)
    ]
    result = run_bench(
        cfg, variants, concurrency=args.concurrency, per_level=args.requests, seed=args.seed
    )
    print_table(result)
    _write_json(args.json, result)
    return 0


def _write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2))
        console.print(f"wrote {path}")
