"""`llmrec bench store`: what the user store costs a request, and what it holds in memory.

For a dataset's interaction log (`--data`, default the config's) and, with
`--synthetic-users N`, a synthetic log of N users, it measures in one run:

- the read a `user_id` request makes (`store.history`) for a seeded sample of
  the log's users, p50/p99 over `--reads` reads, with the `local` store
  (the router replica's memory) and with `redis` (one round trip to a server
  on loopback); the `local` row is the baseline;
- memory: the router replica's with the `local` store (the Python objects its
  histories keep, traced while the log loads), and the Redis server's
  (`used_memory` growth) with `redis`, per million users.

The Redis server is `--redis-url`, or, without one, a `redis-server` started
for the run on a free loopback port (AOF on, `appendfsync always`, as the
README says to run it) and stopped after. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from cluster.redis_server import RedisServer

__all__ = ["register", "run_store_bench"]

console = Console()


@contextmanager
def _redis(url: str | None):
    """`url`, or a durable redis-server of our own for the run."""
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory() as workdir:
        try:
            server = RedisServer(Path(workdir))
        except FileNotFoundError as exc:
            raise SystemExit(str(exc)) from exc
        with server:
            yield server.url


def synthetic_log(out_dir: Path, users: int, per_user: int, items: int, seed: int) -> Path:
    """`out_dir/interactions.parquet`: `users` users with `per_user` items each (Zipf-ish
    item popularity), written in chunks."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "interactions.parquet"
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("ts", pa.int64())])
    chunk = 100_000
    with pq.ParquetWriter(path, schema) as writer:
        for start in tqdm(range(0, users, chunk), desc="synthetic log", unit="100k users"):
            n = min(chunk, users - start)
            user_ids = np.repeat(np.arange(start, start + n), per_user).astype(str)
            picks = np.minimum(rng.zipf(1.3, n * per_user), items) - 1
            ts = np.tile(np.arange(per_user), n)
            writer.write_table(
                pa.table({"user_id": user_ids, "item_id": picks.astype(str), "ts": ts}, schema)
            )
    return path


def _latency(reads: list[float]) -> dict[str, float]:
    ms = np.asarray(reads) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4)}  # fmt: skip


async def _read_times(store: Any, users: list[str]) -> list[float]:
    out = []
    for user in users:
        t = time.perf_counter()
        await store.history(user)
        out.append(time.perf_counter() - t)
    return out


def _row(label: str, store: str, users: int, rows: int, reads: list[float], load_s: float,
         memory: int, mean_len: float) -> dict[str, Any]:  # fmt: skip
    return {
        "data": label,
        "store": store,
        "users": users,
        "interactions": rows,
        **_latency(reads),
        "load_s": round(load_s, 1),
        "memory_mb": round(memory / 2**20, 1),
        "memory_mb_per_million_users": round(memory / 2**20 / users * 1e6, 1),
        "mean_history": round(mean_len, 1),
    }


def _measure(data_dir: Path, redis_url: str, reads: int, seed: int, label: str) -> list[dict]:
    from deployments.router.feedback import FEEDBACK_FILE, FeedbackLog
    from deployments.router.store import LocalStore, RedisStore
    from retrieval.config import AppConfig

    n_rows = pq.read_metadata(data_dir / "interactions.parquet").num_rows
    rows = []
    # local: the Python objects the router's histories keep (traced while they load).
    gc.collect()
    cfg = AppConfig(data_dir=str(data_dir))
    tracemalloc.start()
    t = time.perf_counter()
    local = LocalStore(cfg, FeedbackLog(data_dir / FEEDBACK_FILE))
    load_s = time.perf_counter() - t
    gc.collect()
    local_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    users = sorted(local.histories)
    sample = random.Random(seed).choices(users, k=reads)
    mean_len = float(np.mean([len(local.histories[u]) for u in sample]))
    local_reads = asyncio.run(_read_times(local, sample))
    rows.append(
        _row(label, "local", len(users), n_rows, local_reads, load_s, local_bytes, mean_len)
    )
    del local
    gc.collect()

    import redis

    server = redis.Redis.from_url(redis_url)
    server.flushdb()
    before = server.info("memory")["used_memory"]
    rcfg = AppConfig(data_dir=str(data_dir), router={"user_store": "redis", "redis_url": redis_url})
    store = RedisStore(rcfg)
    t = time.perf_counter()
    store.load_log()
    load_s = time.perf_counter() - t
    used = server.info("memory")["used_memory"] - before

    async def remote_reads() -> list[float]:
        await store.history(sample[0])  # the connection
        return await _read_times(store, sample)

    redis_reads = asyncio.run(remote_reads())
    rows.append(_row(label, "redis", len(users), n_rows, redis_reads, load_s, used, mean_len))
    store.close()
    server.flushdb()
    return rows


def run_store_bench(
    data_dir: Path,
    *,
    redis_url: str | None = None,
    reads: int = 2000,
    synthetic_users: int = 0,
    per_user: int = 10,
    seed: int = 0,
) -> list[dict[str, Any]]:
    with _redis(redis_url) as url:
        rows = _measure(data_dir, url, reads, seed, data_dir.name)
        if synthetic_users:
            with tempfile.TemporaryDirectory() as tmp:
                synthetic_log(Path(tmp), synthetic_users, per_user, 50_000, seed)
                rows += _measure(Path(tmp), url, reads, seed, "synthetic")
    return rows


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "store",
        help="the user store's read per request and its memory: local vs redis",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--data", type=Path, help="dataset folder (default: the config's)")
    p.add_argument("--redis-url", help="a Redis server (default: one started for the run)")
    p.add_argument("--reads", type=int, default=2000, help="history reads per store")
    p.add_argument("--synthetic-users", type=int, default=0, help="also a log of N users")
    p.add_argument("--per-user", type=int, default=10, help="synthetic items per user")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows as JSON here")
    p.set_defaults(func=cmd_bench_store)


def cmd_bench_store(args: argparse.Namespace) -> int:
    from cluster import local

    _, cfg = local.render_serve_config(args.config, data_dir=args.data)
    rows = run_store_bench(
        cfg.data_path,
        redis_url=args.redis_url,
        reads=args.reads,
        synthetic_users=args.synthetic_users,
        per_user=args.per_user,
        seed=args.seed,
    )
    table = Table(title="user store: one history read per request, and memory")
    cols = {"data": "log", "store": "store", "users": "users", "mean_history": "mean hist",
            "p50_ms": "p50 ms", "p99_ms": "p99 ms", "load_s": "load s", "memory_mb": "MB",
            "memory_mb_per_million_users": "MB/1M users"}  # fmt: skip
    for col, title in cols.items():
        table.add_column(title, justify="left" if col in ("data", "store") else "right")
    for row in rows:
        table.add_row(*(str(row[c]) for c in cols))
    console.print(table)
    console.print(
        "local: the router replica's memory (the histories' Python objects); "
        "redis: the server's used_memory growth; reads are sequential, one user each"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
        console.print(f"wrote {args.json}")
    return 0
