"""The `llmrec` command line.

Each subcommand prints a human-readable result and, where it has one, writes
JSON for programs (`--json FILE`). Long jobs show progress bars.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cluster import k8s, local  # noqa: E402
from loadtest.auth import add_api_key_argument, api_key_from, auth_headers  # noqa: E402
from retrieval.artifacts import ArtifactError  # noqa: E402
from retrieval.build import prepare_demo  # noqa: E402
from retrieval.config import INDEX_TYPES, AppConfig, is_uri, resolve_path  # noqa: E402

console = Console()

# Modules adding subcommands: each has `register(subparsers)` that adds its parser and
# sets `func` (taking the parsed args, returning an exit code).
COMMAND_MODULES: list[str] = [
    "cluster.loadtest_cmd",
    "cluster.eval_cmd",
    "cluster.chaos_cmd",
    "cluster.data_cmd",
]
BENCH_MODULES: list[str] = [
    "cluster.bench.encoder",
    "cluster.bench.retrieval",
    "cluster.bench.reranker",
    "cluster.bench.pipeline",
    "cluster.bench.store",
    "cluster.bench.collab",
]

DEMO_DATA = "data/demo"
DEMO_QUERY = "a slow-burn space drama about astronauts far from home"


def _app_config(config_path: Path, data_dir: str | None = None) -> AppConfig:
    if data_dir and is_uri(data_dir):  # as given: a Path would fold its `//`
        _, cfg = local.render_serve_config(config_path, overrides={"data_dir": data_dir})
        return cfg
    _, cfg = local.render_serve_config(config_path, data_dir=Path(data_dir) if data_dir else None)
    return cfg


def cmd_models(args: argparse.Namespace) -> int:
    from retrieval.models import prepare_models

    cfg = _app_config(args.config)
    models_dir = resolve_path(args.models_dir or cfg.models_dir)
    paths = prepare_models(models_dir)
    for name, path in paths.items():
        console.print(f"[bold]{name}[/]: {path}")
    _write_json(args.json, paths)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from retrieval import catalog, demo_data

    out = Path(args.out)
    if args.format == "movielens":
        report = catalog.ingest_movielens(
            Path(args.source), out, min_rating=args.min_rating, drop_unknown=args.drop_unknown
        )
    elif args.format == "synthetic":
        from cluster.bench.synthetic import make_synthetic_dataset

        report = make_synthetic_dataset(out, n_items=args.items, n_users=args.users, seed=args.seed)
    elif args.format == "demo":
        report = demo_data.make_demo_dataset(
            out, n_items=args.items, n_users=args.users, seed=args.seed
        )
    else:
        report = catalog.ingest_table(
            Path(args.source),
            out,
            interactions=Path(args.interactions) if args.interactions else None,
            fmt=args.format,
            id_col=args.id_col,
            title_col=args.title_col,
            text_col=args.text_col,
            category_col=args.category_col,
            category_sep=args.category_sep,
            user_col=args.user_col,
            ts_col=args.ts_col,
            drop_unknown=args.drop_unknown,
        )
    console.print(
        f"wrote {report.catalog_path} ({report.items} items) and "
        f"{report.interactions_path} ({report.interactions} interactions, {report.users} users"
        f"{f', {report.dropped} dropped' if report.dropped else ''})"
    )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from retrieval.build import build_from_config, describe_build

    if is_uri(args.data):
        raise ValueError(
            "`llmrec build` writes a local folder: build into one, then upload it with "
            "`llmrec data push DIR URI`"
        )
    cfg = _app_config(args.config, args.data)
    t = time.perf_counter()
    if args.incremental:
        from deployments.router.fold import fold_feedback

        folded = fold_feedback(cfg)
        console.print(
            f"folded {folded.events} feedback events ({folded.added} new rows, "
            f"{folded.interactions} in the log) and refit the collaborative models in "
            f"{time.perf_counter() - t:.1f}s; running routers swap them in within "
            f"{cfg.router.model_reload_s:g}s"
        )
        return 0
    manifest = build_from_config(cfg, args.shards, args.index)
    console.print(f"{describe_build(manifest, cfg.index_path)} in {time.perf_counter() - t:.1f}s")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    data = args.data or (DEMO_DATA if args.demo else None)
    cfg = _app_config(args.config, data)
    if args.demo:
        prepare_demo(cfg, log=console.print)
    url = _up(args.config, cfg, args.address)
    console.print(f'[green]ready[/] at {url}  (try `llmrec query --text "..."`)')
    return 0


def _up(config: Path, cfg: AppConfig, address: str | None = None) -> str:
    with console.status("deploying; waiting for /v1/health …") as status:

        def on_wait(code: int, body: dict) -> None:
            checks = body.get("checks") or {}
            pending = [k for k, v in checks.items() if v != "ok"]
            status.update(
                f"waiting for /v1/health ({code or 'no answer'}"
                f"{'; pending: ' + ', '.join(pending) if pending else ''})"
            )

        if is_uri(cfg.data_dir):  # every node mirrors it; nothing is copied here
            return local.up(
                config, overrides={"data_dir": cfg.data_dir}, address=address, on_wait=on_wait
            )
        return local.up(config, data_dir=cfg.data_path, address=address, on_wait=on_wait)


def cmd_down(args: argparse.Namespace) -> int:
    local.down()
    console.print("stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    code, body = local.health(args.url)
    if code == 0:
        console.print(f"nothing answers at {args.url}")
        return 1
    console.print(f"{args.url}: {body.get('status')} ({code})")
    for name, state in (body.get("checks") or {}).items():
        console.print(f"  {name}: {state}")
    llm = body.get("reranker")
    if llm:
        cost = llm.get("cost", {})
        console.print(
            f"  LLM: {llm.get('dtype')} ({llm.get('dtype_reason')}), threads on cores "
            f"{llm.get('cpu_threads_bind', '-')}; {cost.get('prefill_ms_per_token')} ms/prompt "
            f"token, {cost.get('decode_ms_per_step')} ms/decode step + "
            f"{cost.get('decode_ms_per_step_and_sequence')} per sequence; explain prefix-cache hit "
            f"{llm.get('explain', {}).get('prefix_cache_hit_rate', 0):.0%}"
        )
    if args.placement:
        _print_placement(args.dashboard, args.address)
    return 0 if code == 200 else 1


def _print_placement(dashboard: str, address: str) -> None:
    from rich.table import Table

    from cluster.nodes import replica_placement

    table = Table("deployment", "replica", "state", "node", "node ip", "pid", "node resources")
    for r in replica_placement(dashboard, address):
        node = f"{str(r['node_id'])[:8]}{' (head)' if r['head'] else ''}"
        table.add_row(
            r["deployment"],
            str(r["replica"]),
            str(r["state"]),
            node,
            str(r["node_ip"]),
            str(r["pid"]),
            ", ".join(f"{k} {v:g}" for k, v in r["node_resources"].items()) or "–",
        )
    console.print(table)


def query(
    url: str, body: dict[str, Any], timeout: float = 120.0, *, api_key: str | None = None
) -> tuple[int, dict]:
    """`POST {url}/v1/recommend` with `body`, sending `api_key` as a bearer token if given."""
    import httpx

    r = httpx.post(f"{url}/v1/recommend", json=body, headers=auth_headers(api_key), timeout=timeout)
    return r.status_code, r.json()


def _why(item: dict[str, Any]) -> str:
    """The explanation, marked when it is a template reason rather than a generated one."""
    text = item.get("explanation") or ""
    return f"{text} (template)" if text and item.get("explanation_source") == "template" else text


def print_answer(title: str, answer: dict[str, Any]) -> None:
    table = Table(title=title, show_lines=bool(any(i.get("explanation") for i in answer["items"])))
    for col in ("#", "item", "title", "score", "sources", "why"):
        table.add_column(col, overflow="fold")
    for n, item in enumerate(answer["items"], 1):
        table.add_row(
            str(n),
            item["item_id"],
            item["title"],
            f"{item['score']:.3f}",
            ",".join(item["sources"]),
            _why(item),
        )
    console.print(table)
    timings = "  ".join(f"{k}={v:.0f}ms" for k, v in answer["timings_ms"].items())
    console.print(f"reranked={answer['reranked']}  degraded={answer['degraded'] or '-'}  {timings}")


def cmd_query(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"k": args.k, "rerank": args.rerank, "explain": args.explain}
    if args.user:
        body["user_id"] = args.user
    if args.history:
        body["history"] = args.history
    if args.text:
        body["query"] = args.text
    if args.category:
        body["filters"] = {"category": args.category}
    code, answer = query(args.url, body, api_key=api_key_from(args.api_key))
    if code != 200:
        console.print(f"[red]{code}[/] {json.dumps(answer)}")
        return 1
    print_answer("recommendations", answer)
    _write_json(args.json, answer)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    cfg = _app_config(args.config, DEMO_DATA)
    prepare_demo(cfg, log=console.print)
    url = _up(args.config, cfg)
    console.print(f"[green]ready[/] at {url} after {time.perf_counter() - started:.0f}s")
    api_key = api_key_from(args.api_key)
    try:
        for title, body in (
            ("demo user 1 (history from the log)", {"user_id": "1"}),
            (f"free text: {DEMO_QUERY!r}", {"query": DEMO_QUERY}),
        ):
            code, answer = query(
                url, {**body, "k": 10, "rerank": True, "explain": True}, api_key=api_key
            )
            if code != 200:
                console.print(f"[red]{code}[/] {answer}")
                return 1
            print_answer(title, answer)
        console.print(f"first answers {time.perf_counter() - started:.0f}s after start")
    finally:
        if not args.keep:
            local.down()
    return 0


def cmd_k8s(args: argparse.Namespace) -> int:
    options = k8s.RenderOptions(
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        gpu_workers=args.gpu_workers,
        cpu_workers=args.cpu_workers,
        data_dir=args.data_dir,
        auth_secret=args.auth_secret,
    )
    text = k8s.render_text(args.config, options, kind=args.kind)
    if args.output:
        Path(args.output).write_text(text)
        console.print(f"wrote {args.output}", highlight=False)
    else:
        sys.stdout.write(text)
    return 0


def _write_json(path: str | None, data: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))
        console.print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmrec", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config",
        type=Path,
        default=local.DEFAULT_CONFIG,
        help="Serve config whose app args are the AppConfig (default: ray_config.yaml)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="prepare models, make demo data, build, serve, query, stop")
    s.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    add_api_key_argument(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("models", help="prepare the offline models")
    s.add_argument("action", choices=["prepare"])
    s.add_argument("--models-dir", help="cache folder (default: the config's models_dir)")
    s.add_argument("--json", help="write the model paths as JSON here")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("ingest", help="normalise a catalog and interaction log to Parquet")
    s.add_argument(
        "format", choices=["parquet", "csv", "jsonl", "auto", "movielens", "demo", "synthetic"]
    )
    s.add_argument("source", nargs="?", help="catalog file, or the MovieLens folder")
    s.add_argument("--out", required=True, help="dataset folder to write")
    s.add_argument("--interactions", help="interaction log file (parquet/csv/jsonl)")
    for flag, default in (
        ("id-col", "item_id"),
        ("title-col", "title"),
        ("text-col", "text"),
        ("category-col", "categories"),
        ("category-sep", "|"),
        ("user-col", "user_id"),
        ("ts-col", "ts"),
    ):
        s.add_argument(f"--{flag}", default=default, help=f"(default: {default})")
    s.add_argument("--min-rating", type=float, default=0.0, help="MovieLens: drop lower ratings")
    s.add_argument(
        "--drop-unknown",
        action="store_true",
        help="drop interactions with items missing from the catalog",
    )
    s.add_argument("--items", type=int, default=3000, help="demo, synthetic: catalog size")
    s.add_argument("--users", type=int, default=5000, help="demo, synthetic: users (default 5,000)")
    s.add_argument("--seed", type=int, default=0, help="demo, synthetic: random seed")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("build", help="encode the catalog and write FAISS shards")
    s.add_argument("--data", required=True, help="dataset folder (from `llmrec ingest`)")
    s.add_argument("--shards", type=int, default=4)
    s.add_argument(
        "--index",
        choices=["auto", *INDEX_TYPES],
        help="index type per shard (default: retriever.index.type in the config, `auto`: "
        "exact up to 100k items per shard, else ivfsq); its params come from retriever.index",
    )
    s.add_argument(
        "--incremental",
        action="store_true",
        help="fold the feedback the user store received into the interaction log and refit "
        "the collaborative models only (running routers pick them up); the shards stay",
    )
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("up", help="start or join Ray, deploy, wait until healthy")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--data", help="dataset folder with index/")
    g.add_argument("--demo", action="store_true", help="make and serve the demo data")
    s.add_argument("--address", help="dashboard address of an existing cluster")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("down", help="shut Serve down and stop the local Ray head")
    s.set_defaults(func=cmd_down)

    s = sub.add_parser("status", help="health of the running service")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    s.add_argument(
        "--placement",
        action="store_true",
        help="also list every replica with the node it runs on (Serve's REST API)",
    )
    s.add_argument("--dashboard", default=local.DASHBOARD, help="Ray dashboard of the cluster")
    s.add_argument("--address", default=local.HEAD_ADDRESS, help="GCS address (ray list nodes)")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("query", help="ask the running service for recommendations")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    s.add_argument("--user")
    s.add_argument("--history", nargs="+")
    s.add_argument("--text")
    s.add_argument("--category", nargs="+", help="keep only these categories")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--explain", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--json", help="write the answer as JSON here")
    add_api_key_argument(s)
    s.set_defaults(func=cmd_query)

    render = k8s.RenderOptions()  # the defaults
    s = sub.add_parser("k8s", help="cluster manifests rendered from the Serve config")
    k8s_sub = s.add_subparsers(dest="k8s", required=True)
    s = k8s_sub.add_parser(
        "render",
        help="print the KubeRay RayService (or, --kind serve, the Serve config for a `ray up` "
        "cluster) placed for GPU and CPU shard workers",
    )
    s.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="Serve config to render (default: ray_config.yaml)",
    )
    s.add_argument("--kind", choices=["rayservice", "serve"], default="rayservice")
    s.add_argument("--image", default=render.image, help="image of every pod (%(default)s)")
    s.add_argument(
        "--gpu-workers",
        type=int,
        default=render.gpu_workers,
        help="GPU pods, 1 GPU each; 0: encoder and reranker on CPU (%(default)s)",
    )
    s.add_argument(
        "--cpu-workers",
        type=int,
        default=render.cpu_workers,
        help="CPU shard pods: the retrievers (%(default)s)",
    )
    s.add_argument("--data-dir", help="dataset path or URI on every pod (default: the config's)")
    s.add_argument("--name", default=render.name, help="RayService name (%(default)s)")
    s.add_argument("--namespace", help="RayService namespace (default: kubectl's)")
    s.add_argument("--auth-secret", help="Secret with key auth_token (default: KubeRay makes one)")
    s.add_argument("-o", "--output", help="write here instead of stdout")
    s.set_defaults(func=cmd_k8s)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    bench = sub.add_parser("bench", help="benchmarks: print a table, write JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    for module in BENCH_MODULES:
        importlib.import_module(module).register(bench_sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "query" and not (args.user or args.history or args.text):
        parser().error("query needs --user, --history or --text")
    try:
        return args.func(args)
    except local.ClusterError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    except (ValueError, FileNotFoundError, ArtifactError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
