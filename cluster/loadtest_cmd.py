"""`llmrec loadtest`: measure a running service, or sweep GPU/replica counts and redeploy.

Without `--sweep` it runs one scenario against `--url` and writes the report.
With `--sweep gpus=1,2,4` or `--sweep replicas=1,2,4` it writes a Serve config
per point (encoder and reranker replica counts and `num_gpus`), redeploys it
with `serve deploy`, waits until Serve runs exactly those replicas and
`/v1/health` is ready, warms up, measures, and moves to the next point. On a
cluster without GPUs replicas stand in for GPUs. `--demo` prepares the demo
data and starts the local cluster itself when none runs (and stops it after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from cluster import local
from cluster.bench.driver import free_port
from cluster.cpu_probe import ServeCpuProbe
from cluster.placement import SHARD_REPLICA_UNITS, SHARD_RESOURCE, shard_node_resources
from cluster.sweep_deploy import (
    APP_NAME,
    ENCODER,
    ServeDeployer,
    capacity_layout,
    local_gpus,
    logical_cpus_needed,
    plan_points,
    restore_app,
)
from loadtest.auth import add_api_key_argument, api_key_from, auth_headers
from loadtest.errors import LoadtestError
from loadtest.overload import overload_report, run_overload
from loadtest.progress import LiveProgress
from loadtest.report import build_report, write_report
from loadtest.runner import check_target
from loadtest.scenario import Scenario, builtin_scenarios, load_scenario
from loadtest.sweep import Deployed, PointResult, SweepPoint, parse_sweep, run_sweep
from loadtest.traffic import TrafficData

__all__ = ["cmd_loadtest", "parse_sets", "register"]

console = Console()

DEMO_DATA = "data/demo"
DEFAULT_DASHBOARD = local.DASHBOARD


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`["reranker.enabled=false", "encoder.max_batch_size=32"]` → nested AppConfig overrides."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise LoadtestError(f"--set {item!r}: write section.field=value")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


class _Notes:
    """Deploy progress as one line that changes in place (or printed lines without a TTY)."""

    def __init__(self, live: LiveProgress | None) -> None:
        self.live = live
        self.last = ""

    def __call__(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        if self.live is not None:
            self.live.note(text)
        else:
            console.print(text)


def _scenario(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(args.scenario or ("overload" if args.overload else "retrieval"))
    changes: dict[str, Any] = {
        "duration_s": args.duration,
        "max_requests": args.max_requests,
        "warmup_s": args.warmup,
        "spawn_rate": args.spawn_rate,
        "slo_p99_ms": args.slo_p99_ms,
        "seed": args.seed,
        "client": args.client,
    }
    if args.users:
        changes.update(mode="closed", users=args.users)
    if args.rate:
        changes.update(mode="open", rates_rps=args.rate)
    if args.mode:
        changes["mode"] = args.mode
    return scenario.with_overrides(**changes)


def _traffic(data_dir: Path, scenario: Scenario) -> TrafficData:
    if (data_dir / "catalog.parquet").exists():
        return TrafficData.from_data_dir(
            data_dir, extra_queries=scenario.queries, seed=scenario.seed
        )
    console.print(f"[yellow]no dataset at {data_dir}: sending synthetic ids[/]")
    return TrafficData.synthetic(extra_queries=scenario.queries or None, seed=scenario.seed)


def _print_summary(report: dict[str, Any], paths: dict[str, Path]) -> None:
    table = Table(title=f"loadtest {report['scenario']} ({report['axis']})")
    for col in ("point", "GPUs", "load", "thr/s", "good/s", "p50", "p99", "err", "SLO", "eff"):
        table.add_column(col, justify="right")
    for p in report["points"]:
        table.add_row(
            p["label"],
            f"{p['gpus']:g}",
            f"{p['load']:g}",
            f"{p['throughput_rps']:.1f}",
            f"{p['goodput_rps']:.1f}",
            f"{p['p50_ms']:.0f}",
            f"{p['p99_ms']:.0f}",
            f"{p['error_rate']:.1%}",
            "yes" if p["meets_slo"] else "no",
            f"{p['scaling_efficiency']:.2f}",
        )
    console.print(table)
    cost = report["cost_per_1k_requests"]
    console.print(
        f"scaling efficiency {report['scaling_efficiency']:.2f}; cost per 1k requests "
        + (f"${cost:.4f} ({report['cost_basis']})" if cost is not None else "n/a")
    )
    if report["target_rps"]:
        console.print(
            f"fewest GPUs for {report['target_rps']:g} rps at p99 ≤ {report['slo_p99_ms']:g} ms: "
            f"{report['min_gpus_for_target'] or 'none measured'}"
            + (
                f" (linear estimate {report['min_gpus_for_target_estimate']})"
                if report["min_gpus_for_target_estimate"]
                else ""
            )
        )
    if report.get("error"):
        console.print(f"[red]stopped early:[/] {report['error']}")
    console.print(f"report: {paths['md']}  {paths['html']}  {paths['json']}")


def _run(
    args: argparse.Namespace,
    scenario: Scenario,
    traffic: TrafficData,
    out: Path,
    points: list[SweepPoint],
    deploy: Callable[[SweepPoint], Deployed],
    notes: _Notes,
    cpu_probe: Callable[[], dict[str, float]] | None = None,
) -> tuple[list[PointResult], str | None]:
    """Run the points with the live display (unless --no-progress)."""

    def measure(live: LiveProgress | None):
        notes.live = live
        return run_sweep(
            points,
            deploy,
            scenario,
            traffic,
            out_dir=out,
            allow_hosts=args.allow_host,
            progress=live,
            health_timeout_s=args.deploy_timeout,
            log=console.print,
            headers=auth_headers(api_key_from(args.api_key)),
            cpu_probe=cpu_probe,
        )

    if args.no_progress:
        return asyncio.run(measure(None))
    with LiveProgress(console, slo_ms=scenario.slo_p99_ms) as live:
        try:
            return asyncio.run(measure(live))
        finally:
            notes.live = None


GENERATOR_BUSY_PERCENT = 80.0
"""Past this share of a core the load generator's own queueing shows in the latencies."""


def cmd_overload(args: argparse.Namespace) -> int:
    """`--overload`: capacity closed loop, then `--overload-factor` times it open loop."""
    scenario = _scenario(args)
    url = check_target(args.url, args.allow_host)
    _, cfg = local.render_serve_config(args.config, data_dir=args.data or None)
    traffic = _traffic(cfg.data_path, scenario)
    console.print(
        f"overload: measuring capacity for {args.capacity_s:.0f} s, then "
        f"{args.overload_factor}x it open loop for {scenario.duration_s:.0f} s"
    )
    run = asyncio.run(
        run_overload(
            url,
            scenario,
            traffic,
            factor=args.overload_factor,
            capacity_s=args.capacity_s,
            step_s=scenario.duration_s,
            allow_hosts=tuple(args.allow_host),
            headers=auth_headers(api_key_from(args.api_key)),
        )
    )
    report = overload_report(run)
    out = Path(args.out or f"out/loadtest/overload-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "overload.json").write_text(json.dumps(report, indent=1))
    table = Table(title="overload check")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in report.items():
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"wrote {out / 'overload.json'}")
    if report["generator_cpu_percent"] > GENERATOR_BUSY_PERCENT:
        console.print(
            f"[yellow]the generator used {report['generator_cpu_percent']:.0f}% of a core: "
            "the latencies above are partly its own (run it on another machine, "
            "or with --client aiohttp)[/yellow]"
        )
    ok = report["accepted_p99_within_deadline"] and report["refused_without_retry_after"] == 0
    return 0 if ok and report["unanswered"] == 0 else 1


NODE_CPUS = 1
"""Logical CPUs of each worker node `--nodes` starts (the head gets two: it runs the
encoders and the router beside Serve's controller and proxy)."""


def _start_nodes(workers: int):
    from cluster.nodes import LocalCluster

    nodes = LocalCluster(head_cpus=2 * NODE_CPUS).start()
    try:
        for i in range(workers):
            nodes.add_worker(
                f"worker-{i + 1}", num_cpus=NODE_CPUS, resources=shard_node_resources()
            )
    except local.ClusterError:
        nodes.stop()
        raise
    console.print(f"started a head ({nodes.address}) and {workers} worker nodes on this machine")
    return nodes


def cmd_loadtest(args: argparse.Namespace) -> int:
    if args.overload:
        return cmd_overload(args)
    scenario = _scenario(args)
    overrides = parse_sets(args.set)
    data = args.data or (DEMO_DATA if args.demo else None)
    _, cfg = local.render_serve_config(args.config, data_dir=data or None, overrides=overrides)
    out = Path(args.out or f"out/loadtest/{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    notes = _Notes(None)
    started = False
    gpu_standin = True
    if not args.sweep:
        if args.demo:
            raise LoadtestError("--demo goes with --sweep; for one run start `llmrec up --demo`")
        url = check_target(args.url, args.allow_host)
        counts = local.replicas_running(local.serve_status(args.dashboard), APP_NAME) or {}
        n = counts.get(ENCODER, 1) or 1
        gpu_standin = args.gpus is None
        point = SweepPoint(replicas=n, gpus=args.gpus or n, label=f"replicas={n}")
        points, axis = [point], "replicas"

        def deploy(_: SweepPoint) -> Deployed:
            return Deployed(url, counts or None)

        traffic = _traffic(cfg.data_path, scenario)
        layout = None
        results, error = _run(args, scenario, traffic, out, points, deploy, notes)
    else:
        axis, values = parse_sweep(args.sweep)
        if args.demo:
            from retrieval.build import prepare_demo

            prepare_demo(cfg, log=console.print)
        if args.nodes:  # a head and worker nodes of this run's own (cluster/nodes.py)
            overrides = local.merge_overrides(
                overrides, {"retriever": {"resources": {SHARD_RESOURCE: SHARD_REPLICA_UNITS}}}
            )
            resources: dict[str, float] | None = {"CPU": float(NODE_CPUS * (args.nodes + 2))}
        else:
            resources = local.cluster_resources()
            if resources is None and not args.demo:
                raise LoadtestError(
                    "no Ray cluster runs here: start one with `llmrec up`, pass --demo or --nodes"
                )
        started = resources is None or bool(args.nodes)
        gpus = resources.get("GPU", 0) if resources else local_gpus()
        gpu_standin = not gpus
        plan = plan_points(
            axis,
            values,
            cfg,
            gpus_available=bool(gpus),
            encoder_gpu_share=args.encoder_gpu_share,
        )
        from retrieval.shards import load_manifest

        n_shards = load_manifest(cfg.index_path).n_shards
        need = logical_cpus_needed(cfg, max(values), n_shards)
        if resources and resources.get("CPU", 0) < need - 0.5:
            console.print(
                f"[yellow]the running cluster has {resources.get('CPU', 0):g} logical CPUs; the "
                f"largest point asks for ~{need}. Restart it with more (`llmrec down`, then "
                f"`llmrec loadtest --demo …` starts one sized for the sweep).[/]"
            )
        traffic = _traffic(cfg.data_path, scenario)
        points = [p for p, _ in plan]
        layout = capacity_layout(cfg, n_shards, float(os.cpu_count() or 1))
        before = None
        if not started:
            before = next(
                (c for c in local.serve_app_configs(args.dashboard) if c["name"] == APP_NAME), None
            )
        nodes = _start_nodes(args.nodes) if args.nodes else None
        # One proxy on a cluster of this machine: every node would bind the same HTTP port.
        own = {"proxy_location": "HeadOnly", "http_options": {"port": free_port()}}
        try:
            deployer = ServeDeployer(
                args.config,
                cfg.data_path,
                overrides,
                {p.label: o for p, o in plan},
                rerank=cfg.reranker.enabled,
                num_cpus=need,
                dashboard=nodes.dashboard if nodes else args.dashboard,
                timeout_s=args.deploy_timeout,
                notes=notes,
                address=nodes.dashboard if nodes else None,
                serve_overrides=own if nodes else None,
            )
            results, error = _run(
                args, scenario, traffic, out, points, deployer, notes, ServeCpuProbe(APP_NAME)
            )
        finally:
            if nodes is not None:
                console.print("stopping the nodes this run started")
                nodes.stop()
            elif started and not args.keep:
                console.print("stopping the cluster this run started")
                local.down()
            elif not started:
                restore_app(args.config, before, args.deploy_timeout, console.print)
        url = results[0].deployed.url if results else ""
    if not results:
        raise LoadtestError(f"nothing was measured: {error}")
    report = build_report(
        results,
        scenario=scenario,
        axis=axis,
        gpu_standin=gpu_standin,
        gpu_hour_usd=args.gpu_hour_usd,
        target_rps=args.target_rps,
        url=url,
        error=error,
        extra={"config_overrides": overrides, "cluster_started_by_loadtest": started},
        capacity_layout=layout,
    )
    paths = write_report(report, out)
    _print_summary(report, paths)
    return 0 if error is None else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `llmrec loadtest` to the CLI."""
    s = subparsers.add_parser(
        "loadtest",
        help="load-test the service; --sweep gpus=…/replicas=… redeploys per point",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "--scenario",
        help=f"shipped scenario ({', '.join(builtin_scenarios())}) or a YAML file "
        "(default: retrieval; overload with --overload)",
    )
    s.add_argument(
        "--overload",
        action="store_true",
        help="overload check: measure capacity closed loop, then offer --overload-factor "
        "times it open loop; report refusals and accepted p99 against the deadline",
    )
    s.add_argument("--overload-factor", type=float, default=2.0, help="(default 2.0)")
    s.add_argument(
        "--capacity-s", type=float, default=20.0, help="seconds of the capacity run (default 20)"
    )
    s.add_argument("--url", default="http://127.0.0.1:8000", help="service to measure (no sweep)")
    s.add_argument("--sweep", help="gpus=1,2,4 or replicas=1,2,4: redeploy and measure each")
    s.add_argument("--demo", action="store_true", help="sweep the demo data; start Ray if needed")
    s.add_argument("--keep", action="store_true", help="with --demo: leave the cluster running")
    s.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="with --sweep: start a head and this many worker nodes on this machine (retrievers "
        "on the workers) and sweep there; stopped afterwards",
    )
    s.add_argument("--data", help="dataset folder for ids and queries (default: the config's)")
    s.add_argument("--out", help="report folder (default: out/loadtest/<scenario>-<time>)")
    s.add_argument("--duration", type=float, help="measured seconds (split across load steps)")
    s.add_argument("--max-requests", type=int, help="most measured requests")
    s.add_argument("--warmup", type=float, help="warm-up seconds before measuring")
    s.add_argument("--users", type=int, nargs="+", help="closed loop: users per load step")
    s.add_argument("--rate", type=float, nargs="+", help="open loop: requests/s per load step")
    s.add_argument("--mode", choices=["closed", "open"], help="override the scenario's mode")
    s.add_argument("--spawn-rate", type=float, help="closed loop: users started per second")
    s.add_argument("--slo-p99-ms", type=float, help="latency objective for goodput")
    s.add_argument("--target-rps", type=float, help="report the fewest GPUs meeting this rate")
    s.add_argument(
        "--gpu-hour-usd", type=float, default=1.0, help="price of one GPU-hour (default 1.0)"
    )
    s.add_argument("--gpus", type=float, help="no sweep: GPUs the service uses (for the cost)")
    s.add_argument(
        "--encoder-gpu-share",
        type=float,
        default=0.25,
        help="gpus sweep on GPU nodes: share of each GPU the encoder replica takes",
    )
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="AppConfig override for the sweep, e.g. --set reranker.enabled=false",
    )
    s.add_argument("--seed", type=int, help="random seed of the traffic")
    s.add_argument(
        "--client",
        choices=["aiohttp", "httpx"],
        help="HTTP client of the generator (default aiohttp: httpx's pool saturates past ~100 rps)",
    )
    s.add_argument("--allow-host", action="append", default=[], help="allow a non-local target")
    add_api_key_argument(s)
    s.add_argument("--dashboard", default=DEFAULT_DASHBOARD, help="Ray dashboard (Serve REST API)")
    s.add_argument(
        "--deploy-timeout", type=float, default=900.0, help="seconds to wait for each point"
    )
    s.add_argument("--no-progress", action="store_true", help="no live display")
    s.set_defaults(func=cmd_loadtest)
