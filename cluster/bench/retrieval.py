"""`llmrec bench retrieval`: every shard index type on a synthetic catalog, served for real.

For each index type (and the search settings worth showing) the bench builds
the shards with `build_shards`, serves them from real `ShardRetriever` Serve
deployments (one per shard, the options `llmrec up` uses) and queries them
scatter-gather through DeploymentHandles, the way the router does, at each
concurrency. It reports build time, index memory over all shards (the index
files a replica holds in memory; memory-mapped full vectors apart), recall@10
of the merged answer against exact search over the whole catalog, and p50/p99
latency. A first row, `serve floor`, sends the same scatter-gather to shards
that do no work: what Serve itself costs on this machine, the baseline the
other rows are read against. Search settings change in place (Serve
`reconfigure`), without reloading the shards. The data (see
`cluster.bench.retrieval_core`) is seeded. Ray starts in this process, by
default with Serve's throughput-optimised handles
(`RAY_SERVE_THROUGHPUT_OPTIMIZED`; `--serve-mode default` for the plain ones).

Prints a table; `--json FILE` writes `{"items", "dim", "shards", "queries",
"serve_mode", "results": [{"index", "variant", "params", "concurrency",
"recall_at_10", "p50_ms", "p99_ms", "memory_bytes", "build_s", "mapped_bytes",
"qps"}]}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from cluster.bench.driver import closed_loop, free_port
from cluster.bench.retrieval_core import (
    BenchResult,
    Variant,
    default_variants,
    exact_top_k,
    index_bytes,
    make_data,
    mean_recall_at_k,
    synthetic_catalog,
)
from retrieval.config import INDEX_TYPES, RetrieverConfig
from retrieval.merge import merge_top_k
from retrieval.metrics import percentile_ms
from retrieval.shards import Manifest, ShardLayout, build_shards, load_manifest

__all__ = ["measure", "print_table", "register", "run_bench"]

console = Console()
K = 10
WARMUP = 20
SEARCH_PARAMS = ("ef_search", "nprobe", "refine_k_factor")
# The handle path only: the HTTP ingress (HAProxy in `llmrec up`) is not in this bench,
# and HAProxy's fixed stats ports would clash with a service running beside it.
SERVE_MODES: dict[str, dict[str, str]] = {
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "default": {},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "retrieval",
        help="shard index types: build time, memory, recall@10, latency through Serve",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--items", type=int, default=1_000_000, help="catalog size")
    p.add_argument("--dim", type=int, default=384, help="vector dimension")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--index", nargs="+", choices=INDEX_TYPES, default=list(INDEX_TYPES))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=2, help="logical CPUs Ray gets")
    p.add_argument(
        "--serve-mode",
        choices=sorted(SERVE_MODES),
        default="throughput",
        help="Serve's high-throughput mode or its default proxy and handles",
    )
    p.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the scatter-gather to shards that do nothing (Serve's own cost)",
    )
    p.add_argument("--workdir", type=Path, help="index folders go here (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the index folders afterwards")
    p.add_argument("--json", help="write the results as JSON here")
    p.set_defaults(func=cmd_bench_retrieval)


async def measure(
    search: Callable[[np.ndarray], Awaitable[list[str]]],
    queries: np.ndarray,
    concurrency: int,
    *,
    warmup: int = WARMUP,
    progress: bool = False,
    desc: str = "queries",
) -> tuple[list[list[str]], list[float]]:
    """Every query through `search` once, `concurrency` in flight; (answers, seconds each).

    The first `warmup` queries are sent once beforehand, one at a time, and not timed.
    """
    for q in queries[:warmup]:
        await search(q)
    with tqdm(total=len(queries), desc=desc, unit="q", disable=not progress, leave=False) as bar:
        run = await closed_loop(
            lambda _client, i: search(queries[i]),
            concurrency=concurrency,
            requests=len(queries),
            on_answer=bar.update,
        )
    return [run.answers[i] for i in range(len(queries))], run.latencies_s


def _shown_params(manifest: Manifest, settings: RetrieverConfig) -> dict:
    """Build params from the manifest plus the search settings that matter for the type."""
    params = {k: v for k, v in manifest.index_params.items() if k not in ("factory", "train_size")}
    if manifest.index_type == "hnsw":
        params["ef_search"] = settings.ef_search
    elif manifest.index_type in ("ivfsq", "ivfpq"):
        params["nprobe"] = settings.nprobe
        if params.get("refine"):
            params["refine_k_factor"] = settings.refine_k_factor
    return params


def _noop_shard():
    """A shard deployment that answers every search with nothing: the Serve overhead floor."""
    from ray import serve

    @serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.1})
    class NoopShard:
        async def search(
            self, vector: np.ndarray, k: int, exclude: list[str], categories: list[str] | None
        ) -> list:
            return []

    return NoopShard


async def _bench_floor(args: argparse.Namespace, queries: np.ndarray) -> list[BenchResult]:
    """The same scatter-gather to shards that do no work: what Serve alone costs here."""
    from ray import serve

    apps = [f"bench-floor-{s}" for s in range(args.shards)]
    noop = _noop_shard()
    await asyncio.to_thread(
        serve.run_many,
        [serve.RunTarget(noop.bind(), name=app, route_prefix=None) for app in apps],
    )
    handles = [serve.get_app_handle(app) for app in apps]

    async def search(q: np.ndarray) -> list[str]:
        await asyncio.gather(*(h.search.remote(q, K, [], None) for h in handles))
        return []

    results = []
    try:
        for concurrency in args.concurrency:
            t = time.perf_counter()
            _, latencies = await measure(
                search, queries, concurrency, progress=True, desc=f"serve floor c={concurrency}"
            )
            wall = time.perf_counter() - t
            row = BenchResult(
                index="none",
                variant="serve floor",
                params={},
                concurrency=concurrency,
                recall_at_10=0.0,
                p50_ms=round(percentile_ms(latencies, 50), 3),
                p99_ms=round(percentile_ms(latencies, 99), 3),
                memory_bytes=0,
                build_s=0.0,
                qps=round(len(queries) / wall, 1),
            )
            results.append(row)
            console.print(
                f"  serve floor c={concurrency}: p50 {row.p50_ms:.2f} ms, "
                f"p99 {row.p99_ms:.2f} ms, {row.qps:.0f} q/s"
            )
    finally:
        await asyncio.to_thread(_delete, apps)
    return results


def _deploy(apps: list[str], path: Path, cfg: RetrieverConfig, dim: int) -> None:
    """Deploy (or reconfigure in place) one app per shard, all at once; wait until running."""
    from ray import serve

    from deployments.retriever.deployment import bind_shards

    layout = ShardLayout(len(apps))  # one shard per app, as the scatter-gather measured
    serve.run_many(
        [
            serve.RunTarget(
                bind_shards({"data_dir": str(path.parent)}, layout, s, cfg, dim),
                name=app,
                route_prefix=None,
            )
            for s, app in enumerate(apps)
        ]
    )


def _delete(apps: list[str], timeout_s: float = 300.0) -> None:
    """Delete the shard apps together and wait until they are gone (their memory freed)."""
    from ray import serve

    for app in apps:
        serve.delete(app, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while set(apps) & set(serve.status().applications) and time.monotonic() < deadline:
        time.sleep(0.5)


async def _bench_variant(
    variant: Variant,
    args: argparse.Namespace,
    catalog: pa.Table,
    items: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    workdir: Path,
) -> list[BenchResult]:
    """Build one variant, then serve it and measure each of its search settings."""
    from ray import serve

    path = workdir / variant.name / "index"
    console.print(f"[bold]{variant.name}[/]: building {args.shards} shards …")
    start = time.perf_counter()
    await asyncio.to_thread(
        build_shards,
        catalog,
        items,
        path,
        n_shards=args.shards,
        encoder_id="synthetic",
        index=variant.spec,
        progress=True,
    )
    build_s = time.perf_counter() - start
    manifest = load_manifest(path)
    memory, mapped = index_bytes(path)
    console.print(
        f"  built in {build_s:.1f}s, {memory / 2**20:.0f} MiB in memory"
        f"{f', {mapped / 2**20:.0f} MiB memory-mapped' if mapped else ''}"
    )
    apps = [f"bench-shard-{s}" for s in range(args.shards)]
    results = []
    try:
        for settings in variant.settings:
            cfg = settings.model_copy(update={"num_cpus": 0.1})
            # Same shards, new search settings: Serve reconfigures the replicas in place.
            await asyncio.to_thread(_deploy, apps, path, cfg, manifest.dim)
            handles = [serve.get_app_handle(app) for app in apps]

            async def search(q: np.ndarray, handles=handles) -> list[str]:
                parts = await asyncio.gather(*(h.search.remote(q, K, [], None) for h in handles))
                return [hit.item_id for hit in merge_top_k(parts, K)]

            params = _shown_params(manifest, settings)
            for concurrency in args.concurrency:
                t = time.perf_counter()
                answers, latencies = await measure(
                    search,
                    queries,
                    concurrency,
                    progress=True,
                    desc=f"{variant.name} {params} c={concurrency}",
                )
                wall = time.perf_counter() - t
                row = BenchResult(
                    index=manifest.index_type,
                    variant=variant.name,
                    params=params,
                    concurrency=concurrency,
                    recall_at_10=round(mean_recall_at_k(answers, truth, K), 4),
                    p50_ms=round(percentile_ms(latencies, 50), 3),
                    p99_ms=round(percentile_ms(latencies, 99), 3),
                    memory_bytes=memory,
                    build_s=round(build_s, 2),
                    mapped_bytes=mapped,
                    qps=round(len(queries) / wall, 1),
                )
                results.append(row)
                console.print(
                    f"  {params} c={concurrency}: recall@10 {row.recall_at_10:.3f}, "
                    f"p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms, {row.qps:.0f} q/s"
                )
    finally:
        await asyncio.to_thread(_delete, apps)
        if not args.keep:
            shutil.rmtree(path.parent, ignore_errors=True)
    return results


def run_bench(args: argparse.Namespace) -> dict:
    """Build, serve and measure every variant; returns the JSON document."""
    # Before Ray is imported: Serve reads these when its modules load, in this process too.
    os.environ.update(SERVE_MODES[args.serve_mode])
    import ray
    from ray import serve

    items, queries = make_data(args.items, args.queries, args.dim, seed=args.seed, progress=True)
    with console.status("exact top-10 over the whole catalog (ground truth) …"):
        truth = exact_top_k(items, queries, K)
    catalog = synthetic_catalog(args.items)
    variants = default_variants(args.index, args.dim)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="llmrec-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)

    async def run_all() -> list[BenchResult]:
        # One event loop for every handle: the high-throughput mode ties handles to it, so
        # Serve is also shut down on it (its handles cannot close once the loop has).
        out: list[BenchResult] = []
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
            if args.floor:
                out += await _bench_floor(args, queries)
            for variant in variants:
                out += await _bench_variant(variant, args, catalog, items, queries, truth, workdir)
        finally:
            await serve.shutdown_async()
        return out

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        results = asyncio.run(run_all())
    finally:
        ray.shutdown()
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "items": args.items,
        "dim": args.dim,
        "shards": args.shards,
        "queries": args.queries,
        "serve_mode": args.serve_mode,
        "results": [r.to_json() for r in results],
    }


def print_table(doc: dict) -> None:
    """The results as a table: one row per variant, search setting and concurrency."""
    flat = next((r["memory_bytes"] for r in doc["results"] if r["index"] == "flat"), None)
    none = "-"
    table = Table(
        title=f"retrieval: {doc['items']:,} items x {doc['dim']} dims, {doc['shards']} shards, "
        f"{doc['queries']} queries ({doc.get('serve_mode', 'default')} Serve mode)"
    )
    for col in ("index", "build params", "search"):
        table.add_column(col)
    for col in ("conc", "recall@10", "p50 ms", "p99 ms", "q/s", "memory", "vs flat", "mmap"):
        table.add_column(col, justify="right")
    table.add_column("build s", justify="right")
    for r in doc["results"]:
        build = {k: v for k, v in r["params"].items() if k not in SEARCH_PARAMS and k != "refine"}
        search = {k: v for k, v in r["params"].items() if k in SEARCH_PARAMS}
        if r["index"] == "none":
            table.add_row(
                r["variant"],
                "",
                "",
                str(r["concurrency"]),
                none,
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['qps']:.0f}",
                none,
                none,
                "",
                none,
            )
            continue
        table.add_row(
            r["variant"],
            " ".join(f"{k}={v}" for k, v in build.items()),
            " ".join(f"{k}={v}" for k, v in search.items()),
            str(r["concurrency"]),
            f"{r['recall_at_10']:.3f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['qps']:.0f}",
            f"{r['memory_bytes'] / 2**20:,.0f} MiB",
            f"{r['memory_bytes'] / flat:.2f}x" if flat else "",
            f"{r['mapped_bytes'] / 2**20:,.0f} MiB" if r["mapped_bytes"] else "",
            f"{r['build_s']:.1f}",
        )
    Console(width=max(console.width, 200)).print(table)


def cmd_bench_retrieval(args: argparse.Namespace) -> int:
    doc = run_bench(args)
    print_table(doc)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
        console.print(f"wrote {args.json}")
    return 0
