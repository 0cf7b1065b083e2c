"""`llmrec bench encoder`: the encoder pool against two baselines, side by side, over HTTP.

Three systems answer the same OpenAI-style embeddings requests (one distinct
sentence each, so no cache can help) at each concurrency, measured back to
back per concurrency so they share the machine's conditions:

* `naive`: a Serve deployment that runs one forward pass per request
  (`cluster.bench.naive`), behind the same proxy;
* `llmrec`: the `Encoder` deployment with the encoder settings of the Serve
  config (cache off), as an application's ingress on a free port;
* `peer`: the infinity-emb embedding server on the same model folder,
  installed into its own venv under `--cache-dir` when missing.

Ray starts in this process with Serve's high-throughput mode (HAProxy ingress,
direct ingress to replicas: `--serve-mode throughput`, what `llmrec up` uses)
or the default proxy (`--serve-mode default`). The bench also reports the
quality of the CPU fast paths (ONNX Runtime in fp32 and int8, one of which the
encoder serves on CPU by default, and bf16): the mean cosine of their vectors to PyTorch fp32 on the
demo catalog. Prints a table; `--json FILE` writes
`{"results": [{"system", "concurrency", "throughput_rps", "p50_ms", "p99_ms"}],
"cpu_fast_path_cosine" (of the path llmrec served), "cpu_fast_path_cosines",
"cpu_fast_path_top10_overlap" (the share of 500 bench queries' 10 nearest catalog items, by
fp32 vectors, that each path's query vectors still find), ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from cluster.bench.driver import ClosedLoopResult, closed_loop_http, free_port, wait_until_up
from cluster.local import RAY_START_ENV
from retrieval.config import EncoderConfig

__all__ = [
    "FAST_PATHS",
    "SERVE_MODES",
    "bench_texts",
    "fast_path_cosines",
    "install_peer",
    "register",
    "run_bench",
]

console = Console()

SYSTEMS = ("naive", "llmrec", "peer")
QUALITY_QUERIES = 500
"""Bench queries whose catalog neighbours each fast path is compared on."""
FAST_PATHS: dict[str, dict[str, str]] = {
    # The CPU paths faster than PyTorch fp32 eager, as `SentenceEncoder` arguments.
    "onnx": {"engine": "onnx", "precision": "fp32"},
    "int8": {"engine": "onnx", "precision": "int8"},
    "bf16": {"engine": "torch", "precision": "bf16"},
}
SERVE_MODES: dict[str, dict[str, str]] = {
    # What `llmrec up` starts Ray with: HAProxy ingress, gRPC between replicas, nice 0.
    "throughput": dict(RAY_START_ENV),
    # Serve's default Python proxy; replicas still at normal priority so the systems compare.
    "default": {k: v for k, v in RAY_START_ENV.items() if not k.startswith("RAY_SERVE_")},
}
SERVE_APPS = {"naive": "bench-naive", "llmrec": "bench-llmrec"}
PEER_TORCH = "torch==2.13.0+cpu"
PEER_PACKAGE = "infinity-emb[server,torch]"
DEFAULT_CACHE = Path("~/.cache/llmrec/bench").expanduser()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encoder",
        help="encoder pool vs one-pass-per-request vs infinity-emb, over HTTP",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--duration", type=float, default=12.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per point")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--serve-mode", choices=sorted(SERVE_MODES), default="throughput")
    p.add_argument(
        "--naive-threads",
        type=int,
        help="torch threads of the naive baseline (default: torch's own default)",
    )
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="peer venv and logs")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an encoder setting for llmrec (e.g. --set max_batch_tokens=2048)",
    )
    p.set_defaults(func=cmd_bench_encoder)


def bench_texts() -> tuple[list[str], list[str]]:
    """Distinct first sentences and distinct titles of the seeded demo catalog."""
    import pyarrow.parquet as pq

    from retrieval.demo_data import make_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_demo_dataset(Path(tmp))
        table = pq.read_table(Path(tmp) / "catalog.parquet", columns=["title", "text"])
    sentences = [t.split(". ")[0].rstrip(".") for t in table["text"].to_pylist()]
    # Distinct, in a stable order: `_text_maker` pairs them with titles into unique texts.
    return list(dict.fromkeys(sentences)), list(dict.fromkeys(table["title"].to_pylist()))


def _text_maker(sentences: list[str], titles: list[str]) -> Callable[[int], str]:
    """Request k's text: distinct for every k below len(sentences) * len(titles)."""
    n, m = len(sentences), len(titles)

    def text(k: int) -> str:
        return f"{sentences[k % n]}, like {titles[(k // n) % m]}."

    return text


def fast_path_cosines(
    model_path: str, texts: list[str], queries: list[str] | None = None, k: int = 10
) -> tuple[dict[str, float], dict[str, float]]:
    """Per CPU fast path: the mean cosine of its vectors for `texts` to PyTorch fp32's, and, for
    `queries`, the share of each query's `k` nearest texts (by fp32 vectors of both) that the
    fast path's query vector still finds among the fp32 vectors of `texts`. A path the encoder
    refuses on this CPU (its probes stray past the bound) is left out."""
    from retrieval.encoder import SentenceEncoder

    exact = SentenceEncoder(model_path, device="cpu", precision="fp32", engine="torch")
    reference = exact.encode(texts)
    queries = queries or []
    exact_top = _top_k(exact.encode(queries), reference, k) if queries else None
    cosines, overlaps = {}, {}
    for path, options in FAST_PATHS.items():
        fast = SentenceEncoder(model_path, device="cpu", **options)
        if (fast.engine, fast.precision) != (options["engine"], options["precision"]):
            continue  # its probes failed on this CPU: the encoder would not serve it
        cosines[path] = float((reference * fast.encode(texts)).sum(axis=1).mean())
        if exact_top is not None:
            top = _top_k(fast.encode(queries), reference, k)
            shared = [len(set(a) & set(b)) for a, b in zip(top, exact_top, strict=True)]
            overlaps[path] = sum(shared) / (k * len(queries))
    return cosines, overlaps


def _top_k(queries: Any, items: Any, k: int) -> list[list[int]]:
    import numpy as np

    scores = queries @ items.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].tolist()


def served_fast_path(config: EncoderConfig, flags: frozenset[str] | None = None) -> str | None:
    """The CPU fast path the llmrec encoder runs with `config` on a CPU with `flags` (this one's
    by default); None: plain fp32 in PyTorch, or a GPU."""
    from retrieval.encoder import resolve_engine
    from retrieval.hardware import cpu_flags, select_encoder_precision

    if config.device not in ("auto", "cpu") or config.num_gpus > 0:
        return None
    precision = select_encoder_precision(
        config.precision,
        device="cpu",
        engine=config.engine,
        flags=cpu_flags() if flags is None else flags,
    ).dtype
    if precision in ("int8", "bf16"):
        return precision
    return "onnx" if resolve_engine(config.engine, "cpu", precision) == "onnx" else None


def _catalog_texts() -> list[str]:
    import pyarrow.parquet as pq

    from retrieval.build import item_texts
    from retrieval.demo_data import make_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_demo_dataset(Path(tmp))
        table = pq.read_table(Path(tmp) / "catalog.parquet", columns=["title", "text"])
    return item_texts(table["title"].to_pylist(), table["text"].to_pylist())


def install_peer(cache_dir: Path) -> Path:
    """The infinity-emb venv under `cache_dir` (made once: CPU torch first, then the server)."""
    venv = cache_dir / "infinity-venv"
    exe = venv / "bin" / "infinity_emb"
    if exe.exists():
        return exe
    console.print(f"installing {PEER_PACKAGE} into {venv} (once) …")
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, PEER_TORCH], check=True)
    subprocess.run([*pip, PEER_TORCH, PEER_PACKAGE], check=True)
    return exe


@contextmanager
def peer_server(exe: Path, model_path: str, model_name: str, log_dir: Path) -> Iterator[str]:
    """infinity-emb on 127.0.0.1 with the model folder; yields its embeddings URL, then stops it."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    cmd = [
        str(exe), "v2", "--model-id", model_path, "--served-model-name", model_name,
        "--host", "127.0.0.1", "--port", str(port), "--engine", "torch", "--device", "cpu",
    ]  # fmt: skip
    with (log_dir / "infinity.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/embeddings"
        wait_until_up(url, _body("warm up", model_name), timeout_s=180)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _body(text: str, model_name: str) -> dict[str, Any]:
    # base64 is what the OpenAI client asks for by default; all three systems answer it.
    return {"input": text, "model": model_name, "encoding_format": "base64"}


@contextmanager
def serve_apps(
    mode: str,
    encoder_cfg: EncoderConfig,
    model_path: str,
    systems: list[str],
    naive_threads: int | None = None,
) -> Iterator[dict[str, str]]:
    """Ray in this process with `mode`'s env, the naive and llmrec apps; yields their URLs."""
    os.environ.update(SERVE_MODES[mode])
    if mode == "throughput":
        # HAProxy's stats/metrics ports are fixed by default; free ones avoid a running cluster's.
        os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
        os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    import ray
    from ray import serve

    from cluster.bench.naive import NaiveEncoder
    from deployments.encoder.deployment import Encoder

    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    node_id = ray.get_runtime_context().get_node_id()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        urls: dict[str, str] = {}
        if "naive" in systems:
            app = NaiveEncoder.options(
                max_ongoing_requests=encoder_cfg.max_ongoing_requests,
                ray_actor_options={"num_cpus": encoder_cfg.num_cpus},
            ).bind(model_path, encoder_cfg.model, naive_threads)
            serve.run(app, name=SERVE_APPS["naive"], route_prefix="/naive")
            urls["naive"] = f"http://127.0.0.1:{port}/naive/v1/embeddings"
        if "llmrec" in systems:
            app = Encoder.options(**encoder_cfg.deployment_options()).bind(encoder_cfg.model_dump())
            serve.run(app, name=SERVE_APPS["llmrec"], route_prefix="/llmrec")
            urls["llmrec"] = f"http://127.0.0.1:{port}/llmrec/v1/embeddings"
        for url in urls.values():
            wait_until_up(url, _body("warm up", encoder_cfg.model), timeout_s=120)
        yield urls
    finally:
        serve.shutdown()
        ray.shutdown()
        _stop_orphaned_haproxy(node_id)


def _stop_orphaned_haproxy(node_id: str) -> None:
    """Stop this cluster's HAProxy if it outlived Ray (it does when the raylet dies first)."""
    marker = f"/haproxy-serve/{node_id}/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "haproxy" in args and marker in args:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGTERM)


def _encoder_config(config_path: Path, overrides: list[str]) -> EncoderConfig:
    from cluster import local

    _, app_cfg = local.render_serve_config(config_path)
    values = app_cfg.encoder.model_dump()
    for item in overrides:
        key, _, value = item.partition("=")
        values[key] = yaml.safe_load(value)  # 2048, false, null, fp32: as a YAML config says
    values["cache_size"] = 0  # distinct texts anyway; the bench measures batching, not caching
    return EncoderConfig.model_validate(values)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every system at every concurrency; returns the JSON document."""
    from retrieval.models import resolve_encoder

    encoder_cfg = _encoder_config(args.config, args.set)
    model_path = resolve_encoder(encoder_cfg.model)
    systems = list(args.systems)
    sentences, titles = bench_texts()
    text = _text_maker(sentences, titles)

    with console.status("measuring the CPU fast paths against PyTorch fp32 …"):
        queries = [text(k) for k in range(QUALITY_QUERIES)]
        cosines, overlaps = fast_path_cosines(model_path, _catalog_texts(), queries)
    for path, cosine in cosines.items():
        console.print(
            f"CPU fast path {path}: mean cosine to PyTorch fp32 = {cosine:.6f}, "
            f"top-10 catalog neighbours of {len(queries)} queries kept {overlaps[path]:.1%}"
        )
    served = served_fast_path(encoder_cfg)

    rows: list[dict[str, Any]] = []
    peer_exe = install_peer(args.cache_dir) if "peer" in systems else None
    with (
        _maybe_peer(peer_exe, model_path, encoder_cfg.model, args.cache_dir) as peer_url,
        serve_apps(args.serve_mode, encoder_cfg, model_path, systems, args.naive_threads) as urls,
    ):
        if peer_url:
            urls["peer"] = peer_url
        for concurrency in args.concurrency:
            for system in systems:
                url = urls[system]
                point = asyncio.run(
                    closed_loop_http(
                        url,
                        lambda k: _body(text(k), encoder_cfg.model),
                        concurrency=concurrency,
                        duration_s=args.duration,
                        warmup_s=args.warmup,
                    )
                )
                row = {"system": system, **_row(point)}
                if system in SERVE_APPS:
                    row["replicas"] = _running_replicas(SERVE_APPS[system])
                rows.append(row)
                console.print(
                    f"  {system:>6} c={concurrency:<3} {point.throughput_rps:7.1f} rps  "
                    f"p50 {point.p50_ms:7.1f} ms  p99 {point.p99_ms:7.1f} ms"
                    + (f"  {row['replicas']} replicas" if "replicas" in row else "")
                    + (f"  [red]{point.errors} errors[/]" if point.errors else "")
                )
    fields = ("system", "concurrency", "throughput_rps", "p50_ms", "p99_ms", "replicas")
    return {
        "results": [{k: r[k] for k in fields if k in r} for r in rows],
        # The path llmrec served in this run (the lowest cosine when it served none of them).
        "cpu_fast_path_cosine": cosines[served] if served in cosines else min(cosines.values()),
        "cpu_fast_path": served,
        "cpu_fast_path_cosines": cosines,
        "cpu_fast_path_top10_overlap": overlaps,
        "serve_mode": args.serve_mode,
        "errors": {f"{r['system']}@{r['concurrency']}": r["errors"] for r in rows if r["errors"]},
        "duration_s": args.duration,
        "encoder": encoder_cfg.model_dump(
            include={
                "precision",
                "engine",
                "torch_threads",
                "max_batch_tokens",
                "max_batch_size",
                "batch_wait_timeout_s",
                "pass_cost_tokens",
                "max_ongoing_requests",
                "num_cpus",
            }
        ),
    }


@contextmanager
def _maybe_peer(
    exe: Path | None, model_path: str, model_name: str, cache_dir: Path
) -> Iterator[str | None]:
    if exe is None:
        yield None
        return
    with peer_server(exe, model_path, model_name, cache_dir / "logs") as url:
        yield url


def _running_replicas(app: str) -> int:
    """RUNNING replicas of a Serve app of this bench (0 if it is gone)."""
    from ray import serve

    from cluster.local import replicas_running

    return sum((replicas_running(dataclasses.asdict(serve.status()), app) or {}).values())


def _row(point: ClosedLoopResult) -> dict[str, Any]:
    return {
        "concurrency": point.concurrency,
        "throughput_rps": round(point.throughput_rps, 2),
        "p50_ms": round(point.p50_ms, 2),
        "p99_ms": round(point.p99_ms, 2),
        "errors": point.errors,
    }


def print_report(doc: dict[str, Any]) -> None:
    table = Table(title=f"encoder bench ({doc['serve_mode']} Serve mode)")
    for col in ("system", "concurrency", "rps", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for r in doc["results"]:
        table.add_row(
            r["system"],
            str(r["concurrency"]),
            f"{r['throughput_rps']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
        )
    console.print(table)
    by = {(r["system"], r["concurrency"]): r for r in doc["results"]}
    top = max(r["concurrency"] for r in doc["results"])
    llmrec = by.get(("llmrec", top))
    for other in ("naive", "peer"):
        base = by.get((other, top))
        if llmrec and base and base["throughput_rps"]:
            ratio = llmrec["throughput_rps"] / base["throughput_rps"]
            console.print(
                f"c={top}: llmrec/{other} throughput {ratio:.2f}x, "
                f"p99 {llmrec['p99_ms']:.0f} vs {base['p99_ms']:.0f} ms"
            )
    overlaps = doc.get("cpu_fast_path_top10_overlap", {})
    for path, cosine in doc.get("cpu_fast_path_cosines", {}).items():
        served = " (served)" if path == doc.get("cpu_fast_path") else ""
        kept = f", top-10 neighbours kept {overlaps[path]:.1%}" if path in overlaps else ""
        console.print(
            f"CPU fast path {path}{served}: mean cosine to PyTorch fp32 {cosine:.6f}{kept}"
        )


def cmd_bench_encoder(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    doc = run_bench(args)
    print_report(doc)
    console.print(f"bench took {time.perf_counter() - started:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
        console.print(f"wrote {args.json}")
    return 1 if doc["errors"] else 0
