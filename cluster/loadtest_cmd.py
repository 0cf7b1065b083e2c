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
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from cluster import local
from loadtest.errors import LoadtestError
from loadtest.overload import overload_report, run_overload
from loadtest.progress import LiveProgress
from loadtest.report import build_report, write_report
from loadtest.runner import check_target
from loadtest.scenario import Scenario, builtin_scenarios, load_scenario
from loadtest.sweep import Deployed, PointResult, SweepPoint, parse_sweep, run_sweep
from loadtest.traffic import TrafficData
from retrieval.config import AppConfig

__all__ = [
    "ServeDeployer",
    "cmd_loadtest",
    "logical_cpus_needed",
    "parse_sets",
    "plan_points",
    "register",
    "settled",
]

console = Console()

APP_NAME = "llmrec"
ENCODER, RERANKER = "Encoder", "Reranker"
DEMO_DATA = "data/demo"
DEFAULT_DASHBOARD = local.DASHBOARD


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


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


def plan_points(
    axis: str, counts: list[int], cfg: AppConfig, *, gpus_available: bool, encoder_gpu_share: float
) -> list[tuple[SweepPoint, dict[str, Any]]]:
    """Each point with its AppConfig overrides.

    Both pools (encoder, and the reranker when enabled) get `n` replicas, fixed (the
    encoder's autoscaling is turned off for the sweep). With GPUs,
    `gpus=n` packs one encoder and one reranker replica on each GPU (the encoder takes
    `encoder_gpu_share` of it), and `replicas=n` keeps the config's `num_gpus` per
    replica. Without GPUs every replica asks for none and stands in for one GPU.
    """
    rerank = cfg.reranker.enabled
    points = []
    for n in counts:
        enc: dict[str, Any] = {"num_replicas": n, "autoscaling": None}
        rr: dict[str, Any] = {"num_replicas": n}
        if not gpus_available:
            enc["num_gpus"] = rr["num_gpus"] = 0
            gpus: float = n
        elif axis == "gpus":
            enc["num_gpus"] = encoder_gpu_share if rerank else 1.0
            rr["num_gpus"] = 1.0 - encoder_gpu_share
            gpus = n
        else:
            per_replica = cfg.encoder.num_gpus + (cfg.reranker.num_gpus if rerank else 0.0)
            gpus = n * per_replica if per_replica > 0 else n
        overrides: dict[str, Any] = {"encoder": enc}
        if rerank:
            overrides["reranker"] = rr
        points.append((SweepPoint(replicas=n, gpus=gpus, label=f"{axis}={n}"), overrides))
    return points


def logical_cpus_needed(cfg: AppConfig, max_replicas: int, n_shards: int) -> int:
    """Logical CPUs the largest point asks Ray for, with room for a rolling router update."""
    per_replica = cfg.encoder.num_cpus + (cfg.reranker.num_cpus if cfg.reranker.enabled else 0)
    router = cfg.router.num_cpus * cfg.router.num_replicas
    need = max_replicas * per_replica + 2 * router + n_shards * cfg.retriever.num_cpus
    return max(os.cpu_count() or 2, math.ceil(need + 0.5))


def settled(
    status: dict[str, Any] | None, expected: dict[str, int], since: float, app: str = APP_NAME
) -> tuple[bool, str]:
    """Whether `app`, deployed at or after unix time `since`, runs exactly `expected` replicas.

    Returns (settled, what it is waiting for). Raises LoadtestError when the deploy failed.
    """
    details = ((status or {}).get("applications") or {}).get(app)
    if details is None:
        return False, f"app {app!r} not deployed yet"
    state = details.get("status")
    if state in ("DEPLOY_FAILED", "UNHEALTHY"):
        raise LoadtestError(f"app {app!r} {state}: {str(details.get('message', ''))[:2000]}")
    if float(details.get("last_deployed_time_s") or 0) < since:
        return False, "the new config is not applied yet"
    deployments = details.get("deployments") or {}
    missing = sorted(set(expected) - set(deployments))
    if missing:
        return False, f"waiting for deployments {missing}"
    waiting = []
    for name, want in expected.items():
        states = {k: v for k, v in (deployments[name].get("replica_states") or {}).items() if v}
        if states != {"RUNNING": want}:
            waiting.append(f"{name} {states or 'no replicas'} of {want}")
    if state != "RUNNING" or waiting:
        return False, f"app {state}; " + ("; ".join(waiting) or "deployments updating")
    return True, "ready"


def _wait_for_replicas(
    dashboard: str,
    expected: dict[str, int],
    since: float,
    timeout_s: float,
    notes: Callable[[str], None],
) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    what = "no answer from `serve status`"
    while time.monotonic() < deadline:
        status = local.serve_status(dashboard)
        done, what = settled(status, expected, since)
        if done:
            return local.replicas_running(status, APP_NAME) or {}
        notes(f"waiting: {what}")
        time.sleep(2.0)
    raise LoadtestError(f"the app did not reach {expected} in {timeout_s:.0f}s ({what})")


def _local_gpus() -> int:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in proc.stdout.splitlines())


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


class ServeDeployer:
    """Deploys one sweep point: `serve deploy` of the rendered config, then waits for it."""

    def __init__(
        self,
        config: Path,
        data_dir: Path,
        base_overrides: dict[str, Any],
        plan: dict[str, dict[str, Any]],
        *,
        rerank: bool,
        num_cpus: int,
        dashboard: str,
        timeout_s: float,
        notes: _Notes,
    ) -> None:
        self.config, self.data_dir = config, data_dir
        self.base_overrides, self.plan = base_overrides, plan
        self.rerank, self.num_cpus = rerank, num_cpus
        self.dashboard, self.timeout_s, self.notes = dashboard, timeout_s, notes

    def __call__(self, point: SweepPoint) -> Deployed:
        overrides = _merge(self.base_overrides, self.plan[point.label])
        expected = {ENCODER: point.replicas}
        if self.rerank:
            expected[RERANKER] = point.replicas
        since, t = time.time() - 1.0, time.perf_counter()
        self.notes(f"{point.label}: deploying {expected}")
        try:
            url = local.up(
                self.config,
                data_dir=self.data_dir,
                overrides=overrides,
                num_cpus=self.num_cpus,
                timeout_s=self.timeout_s,
                on_wait=lambda code, body: self.notes(
                    f"{point.label}: waiting for /v1/health ({code or 'no answer'})"
                ),
            )
            seen = _wait_for_replicas(
                self.dashboard,
                expected,
                since,
                self.timeout_s,
                lambda text: self.notes(f"{point.label}: {text}"),
            )
        except local.ClusterError as exc:
            raise LoadtestError(str(exc)) from exc
        return Deployed(url, seen, time.perf_counter() - t)


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
        )

    if args.no_progress:
        return asyncio.run(measure(None))
    with LiveProgress(console, slo_ms=scenario.slo_p99_ms) as live:
        try:
            return asyncio.run(measure(live))
        finally:
            notes.live = None


def _restore(config: Path, app_config: dict[str, Any] | None, timeout_s: float) -> None:
    """Redeploy the app config Serve ran before the sweep (as `serve config` reported it)."""
    if app_config is None:
        console.print("no app ran before the sweep; the last point stays deployed")
        return
    serve_config = local.load_serve_config(config)
    serve_config["applications"] = [app_config]
    path = local.RUN_DIR / "restore_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(serve_config, sort_keys=False))
    console.print("redeploying the app config that ran before the sweep")
    try:
        local.up(path, timeout_s=timeout_s)
    except local.ClusterError as exc:
        console.print(f"[red]could not redeploy it:[/] {exc}")


GENERATOR_BUSY_PERCENT = 80.0
"""Past this share of a core the load generator's own queueing shows in the latencies."""


def cmd_overload(args: argparse.Namespace) -> int:
    """`--overload`: capacity closed loop, then `--overload-factor` times it open loop."""
    scenario = _scenario(args)
    url = check_target(args.url, args.allow_host)
    _, cfg = local.render_serve_config(args.config, data_dir=Path(args.data) if args.data else None)
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


def cmd_loadtest(args: argparse.Namespace) -> int:
    if args.overload:
        return cmd_overload(args)
    scenario = _scenario(args)
    overrides = parse_sets(args.set)
    data = args.data or (DEMO_DATA if args.demo else None)
    _, cfg = local.render_serve_config(
        args.config, data_dir=Path(data) if data else None, overrides=overrides
    )
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
        results, error = _run(args, scenario, traffic, out, points, deploy, notes)
    else:
        axis, values = parse_sweep(args.sweep)
        if args.demo:
            from cluster.cli import ensure_demo

            ensure_demo(cfg)
        resources = local.cluster_resources()
        if resources is None and not args.demo:
            raise LoadtestError(
                "no Ray cluster runs here: start one with `llmrec up` or pass --demo"
            )
        started = resources is None
        gpus = resources.get("GPU", 0) if resources else _local_gpus()
        gpu_standin = not gpus
        plan = plan_points(
            axis,
            values,
            cfg,
            gpus_available=bool(gpus),
            encoder_gpu_share=args.encoder_gpu_share,
        )
        from retrieval.shards import load_manifest

        need = logical_cpus_needed(cfg, max(values), load_manifest(cfg.index_path).n_shards)
        if resources and resources.get("CPU", 0) < need - 0.5:
            console.print(
                f"[yellow]the running cluster has {resources.get('CPU', 0):g} logical CPUs; the "
                f"largest point asks for ~{need}. Restart it with more (`llmrec down`, then "
                f"`llmrec loadtest --demo …` starts one sized for the sweep).[/]"
            )
        deployer = ServeDeployer(
            args.config,
            cfg.data_path,
            overrides,
            {p.label: o for p, o in plan},
            rerank=cfg.reranker.enabled,
            num_cpus=need,
            dashboard=args.dashboard,
            timeout_s=args.deploy_timeout,
            notes=notes,
        )
        traffic = _traffic(cfg.data_path, scenario)
        points = [p for p, _ in plan]
        before = None
        if not started:
            before = next(
                (c for c in local.serve_app_configs(args.dashboard) if c["name"] == APP_NAME), None
            )
        try:
            results, error = _run(args, scenario, traffic, out, points, deployer, notes)
        finally:
            if started and not args.keep:
                console.print("stopping the cluster this run started")
                local.down()
            elif not started:
                _restore(args.config, before, args.deploy_timeout)
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
    s.add_argument("--dashboard", default=DEFAULT_DASHBOARD, help="Ray dashboard (Serve REST API)")
    s.add_argument(
        "--deploy-timeout", type=float, default=900.0, help="seconds to wait for each point"
    )
    s.add_argument("--no-progress", action="store_true", help="no live display")
    s.set_defaults(func=cmd_loadtest)
