"""`llmrec bench pipeline`: what a recommendation costs beside one Serve hop.

Against a running service (`llmrec up`), for each concurrency it measures
closed loop, in one run:

- `floor`: `GET /v1/items/{id}`, ingress → router → one shard and back, the
  least work a request through the app can do;
- `user`, `history`, `query`: `POST /v1/recommend` by `user_id`, by an explicit
  `history` (a user's last 20 items) and by free text, retrieval only (no
  rerank, no explanations).

With `--rounds N` the floor and the kinds run N times over at each concurrency,
each kind's share taken against the floor measured just before it, in its own
round (round r asks what seed + r - 1 picks, so a query is not an encoder cache
hit from the round before); a summary gives each kind's median share and its
range over the rounds.
On a small machine the floor alone moves by tens of percent between runs of the
same code, so one round cannot resolve a change of that size.

Each row gives throughput, p50/p99 (nearest rank) of the 200 answers, the
share of the floor's throughput at the same concurrency, how far its p50 is
above the floor's, the answers other than 200 (past `router.max_in_flight`
those are 503 refusals, sent at once; the refused client waits the
`Retry-After` it was given before its next request), and the mean of the service's own
`timings_ms` per stage. A second table gives the CPU milliseconds each request
cost each part of the app (router, retrievers, encoder, proxies, LLM engine, Ray,
the load generator), read from this machine's processes over the same window
(`cluster.bench.cpu`; `--no-cpu` skips it): on saturated cores, the part to make
cheaper. It prints the tables and writes JSON (`--json`). Ids, users and queries
come from the dataset the service was built from (`--data`, default the config's).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from cluster.bench.cpu import PARTS_ORDER, cpu_seconds, per_request_ms
from cluster.bench.driver import (
    FAILURES,
    ClosedLoopResult,
    NotOk,
    client_connections,
    closed_loop,
    honour_retry_after,
    timeouts,
)
from loadtest.auth import add_api_key_argument, api_key_from, auth_headers
from loadtest.runner import LOCAL_HOSTS, check_target
from loadtest.traffic import TrafficData

__all__ = ["KINDS", "register", "run_pipeline_bench"]

console = Console()

KINDS = ("floor", "user", "history", "query")
HISTORY_LEN = 20


Request = tuple[str, str, dict[str, Any] | None]
"""(method, path, JSON body or None)."""


def request_maker(kind: str, traffic: TrafficData, seed: int) -> Callable[[int], Request]:
    """Request k of a `kind` run: seeded, so every run asks the same things in the same order."""
    rng = random.Random(seed)
    retrieval_only = {"k": 10, "rerank": False, "explain": False}
    if kind == "floor":
        return lambda k: ("GET", f"/v1/items/{rng.choice(traffic.items)}", None)
    if kind == "user":
        return lambda k: (
            "POST",
            "/v1/recommend",
            {"user_id": traffic.pick_user(rng, with_history=True), **retrieval_only},
        )
    if kind == "history":

        def history(k: int) -> Request:
            user = traffic.pick_user(rng, with_history=True)
            body = {"history": traffic.history_of(user, rng, HISTORY_LEN), **retrieval_only}
            return "POST", "/v1/recommend", body

        return history
    if kind == "query":
        return lambda k: (
            "POST",
            "/v1/recommend",
            {"query": rng.choice(traffic.queries), **retrieval_only},
        )
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")


async def measure(
    url: str,
    make: Callable[[int], Request],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float = 30.0,
    api_key: str | None = None,
    cpu: dict[str, Any] | None = None,
) -> ClosedLoopResult[dict[str, float]]:
    """One closed-loop point; each answer is the service's `timings_ms` ({} for the floor).

    With `cpu` (a dict), the machine's CPU readings (`cluster.bench.cpu`) as the window
    opens and closes go in it as `before` and `after`.
    """
    extensions = timeouts(timeout_s)
    auth = [(k.encode(), v.encode()) for k, v in auth_headers(api_key).items()]
    async with client_connections(concurrency) as pools:

        async def send(c: int, k: int) -> dict[str, float]:
            method, path, body = make(k)
            headers = [(b"content-type", b"application/json")] if body is not None else []
            headers += auth
            response = await pools[c].request(
                method,
                url + path,
                headers=headers,
                content=json.dumps(body).encode() if body is not None else b"",
                extensions=extensions,
            )
            if response.status != 200:
                await honour_retry_after(response.headers)
                raise NotOk(response.status)
            return json.loads(response.content).get("timings_ms", {}) if body is not None else {}

        async def read_cpu() -> None:
            await asyncio.sleep(warmup_s)
            cpu["before"] = cpu_seconds()
            await asyncio.sleep(duration_s)
            cpu["after"] = cpu_seconds()

        reading = asyncio.ensure_future(read_cpu()) if cpu is not None else None
        result = await closed_loop(
            send,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            failures=(*FAILURES, NotOk),
        )
        if reading is not None:
            await reading
        return result


def _stage_means(result: ClosedLoopResult[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for timings in result.answers.values():
        for stage, ms in timings.items():
            sums.setdefault(stage, []).append(ms)
    return {stage: round(sum(v) / len(v), 2) for stage, v in sums.items()}


async def run_pipeline_bench(
    url: str,
    traffic: TrafficData,
    *,
    concurrencies: list[int],
    kinds: tuple[str, ...] = KINDS,
    duration_s: float = 10.0,
    warmup_s: float = 3.0,
    seed: int = 0,
    api_key: str | None = None,
    log: Callable[[str], None] = lambda line: None,
    cpu: bool = False,
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """Every (concurrency, kind) point, the floor first at each concurrency (module docstring),
    `rounds` times over; each row names its `round` (from 1).

    `api_key` goes on every request as `Authorization: Bearer <key>`. With `cpu`, each row
    has `cpu_ms_per_request`: this machine's CPU by part of the app (`cluster.bench.cpu`).
    """
    rows = []
    for concurrency, round_no in itertools.product(concurrencies, range(1, rounds + 1)):
        floor: dict[str, Any] | None = None
        for kind in ("floor", *(k for k in kinds if k != "floor")):
            of = f" (round {round_no} of {rounds})" if rounds > 1 else ""
            log(
                f"c={concurrency} {kind}{of}: {warmup_s:.0f} s warm-up, {duration_s:.0f} s measured"
            )
            readings: dict[str, Any] | None = {} if cpu else None
            result = await measure(
                url,
                # A new seed a round: the same queries again would be encoder cache hits.
                request_maker(kind, traffic, seed + round_no - 1),
                concurrency=concurrency,
                duration_s=duration_s,
                warmup_s=warmup_s,
                api_key=api_key,
                cpu=readings,
            )
            row: dict[str, Any] = {
                "kind": kind,
                "concurrency": concurrency,
                "round": round_no,
                "requests": result.requests,
                "errors": result.errors,
                "throughput_rps": round(result.throughput_rps, 1),
                "p50_ms": round(result.p50_ms, 2),
                "p99_ms": round(result.p99_ms, 2),
                "stages_ms": _stage_means(result),
            }
            if floor is None:
                floor = row
            row["share_of_floor"] = round(
                row["throughput_rps"] / floor["throughput_rps"] if floor["throughput_rps"] else 0.0,
                3,
            )
            row["p50_above_floor_ms"] = round(row["p50_ms"] - floor["p50_ms"], 2)
            if readings:
                # Every request started in the window, answered or not, cost CPU in it.
                sent = result.requests + result.errors
                row["cpu_ms_per_request"] = per_request_ms(
                    readings["before"], readings["after"], sent
                )
            rows.append(row)
    return rows


def share_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (concurrency, kind) other than the floor, over the rounds: the median, least and
    most share of the floor (each round's against its own floor) and the median rps."""
    points: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] != "floor":
            points.setdefault((r["concurrency"], r["kind"]), []).append(r)
    return [
        {
            "concurrency": concurrency,
            "kind": kind,
            "rounds": len(runs),
            "share_median": statistics.median(r["share_of_floor"] for r in runs),
            "share_min": min(r["share_of_floor"] for r in runs),
            "share_max": max(r["share_of_floor"] for r in runs),
            "throughput_rps_median": statistics.median(r["throughput_rps"] for r in runs),
            "p50_above_floor_ms_median": statistics.median(r["p50_above_floor_ms"] for r in runs),
        }
        for (concurrency, kind), runs in points.items()
    ]


def summary_table(summary: list[dict[str, Any]]) -> Table:
    table = Table(title="share of the floor over the rounds (each against its own round's floor)")
    for col in ("c", "kind", "rounds", "median share", "range", "median rps", "p50-floor"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for s in summary:
        table.add_row(
            str(s["concurrency"]),
            s["kind"],
            str(s["rounds"]),
            f"{s['share_median']:.0%}",
            f"{s['share_min']:.0%}-{s['share_max']:.0%}",
            f"{s['throughput_rps_median']:.1f}",
            f"{s['p50_above_floor_ms_median']:+.1f}",
        )
    return table


def cpu_table(rows: list[dict[str, Any]]) -> Table:
    """CPU ms per request by part of the app, a row per point, the parts in `PARTS_ORDER`."""
    seen = {part for r in rows for part in r.get("cpu_ms_per_request", {})}
    rank = {name: n for n, name in enumerate(PARTS_ORDER)}
    rest = ("ray", "load generator", "other")
    parts = sorted(seen - set(rest), key=lambda p: (rank.get(p.split("-")[0], len(rank)), p)) + [
        p for p in rest if p in seen
    ]
    table = Table(title="CPU ms per request, by part (this machine's processes)")
    for col in ("c", "kind", "all", *parts):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for r in rows:
        cpu = r.get("cpu_ms_per_request", {})
        table.add_row(
            str(r["concurrency"]),
            r["kind"],
            f"{sum(cpu.values()):.2f}",
            *(f"{cpu[p]:.2f}" if p in cpu else "" for p in parts),
        )
    return table


def count(text: str) -> int:
    """A whole number of at least 1, for argparse."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least 1")
    return n


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pipeline",
        help="recommend by user/history/query vs the one-hop floor, against a running service",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    p.add_argument("--data", type=Path, help="dataset the service serves (default: the config's)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per point")
    p.add_argument(
        "--rounds",
        type=count,
        default=1,
        metavar="N",
        help="run the floor and the kinds this many times over; shares per round, summarised",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-host", action="append", default=[], help="allow a non-local target")
    add_api_key_argument(p)
    p.add_argument(
        "--no-cpu",
        dest="cpu",
        action="store_false",
        help="skip the CPU per request by part (read from this machine's processes; "
        "always skipped for a target elsewhere)",
    )
    p.add_argument("--json", help="write the rows as JSON here")
    p.set_defaults(func=cmd_bench_pipeline)


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from cluster import local

    url = check_target(args.url, args.allow_host)
    # The service's processes are visible only when it runs on this machine.
    cpu = args.cpu and httpx.URL(url).host in LOCAL_HOSTS
    _, cfg = local.render_serve_config(args.config, data_dir=args.data)
    traffic = TrafficData.from_data_dir(cfg.data_path, seed=args.seed)
    t = time.perf_counter()
    rows = asyncio.run(
        run_pipeline_bench(
            url,
            traffic,
            concurrencies=args.concurrency,
            kinds=tuple(args.kinds),
            duration_s=args.duration,
            warmup_s=args.warmup,
            seed=args.seed,
            api_key=api_key_from(args.api_key),
            log=console.print,
            cpu=cpu,
            rounds=args.rounds,
        )
    )
    table = Table(title=f"pipeline vs one-hop floor ({url}, {time.perf_counter() - t:.0f} s)")
    columns = ("c", "round", "kind", "rps", "share", "p50 ms", "p99 ms", "p50-floor", "not 200")
    stage_columns = ("encode", "retrieve", "search", "rows", "total")
    for col in (*columns, *stage_columns):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for r in rows:
        stages = r["stages_ms"]
        table.add_row(
            str(r["concurrency"]),
            str(r["round"]),
            r["kind"],
            f"{r['throughput_rps']:.1f}",
            f"{r['share_of_floor']:.0%}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['p50_above_floor_ms']:+.1f}",
            str(r["errors"]),
            *(f"{stages[s]:.1f}" if s in stages else "" for s in stage_columns),
        )
    # Wide enough for every column when the output is not a terminal (a log, a pipe).
    wide = Console(width=max(console.width, 150))
    wide.print(table)
    summary = share_summary(rows) if args.rounds > 1 else None
    if summary:
        wide.print(summary_table(summary))
    if cpu:
        wide.print(cpu_table(rows))
    if args.json:
        out: dict[str, Any] = {"url": url, "rows": rows}
        if summary:
            out["summary"] = summary
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        console.print(f"wrote {args.json}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1
