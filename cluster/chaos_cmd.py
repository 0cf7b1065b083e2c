"""`llmrec chaos`: kill replicas of a running service under load and report what it cost.

A steady load (scenario `chaos`: reads of every kind, some reranked and
explained, feedback and item upserts, each failure retried once) runs
against `--url` for `--duration` seconds. After `--steady` seconds without
faults, one replica of the next target deployment is SIGKILLed every
`--kill-every` seconds (`cluster/faults.py`; `--engine` adds the vLLM engine
process to the targets). Afterwards every acknowledged upsert is read back
over HTTP and every acknowledged feedback event is looked for in the
dataset's `feedback.jsonl`. The report (`chaos.md`, `chaos.json`,
`chaos.png`) gives success without and with one retry, p99 against the
steady phase, the share degraded, each kill's time to recover and the
acknowledged writes lost. Kills reach processes of this machine only.

With `--nodes N` it starts its own cluster instead (`cluster/multinode.py`): a
head and N worker nodes on this machine (`ray start`, ports of their own), the
retriever replicas placed on the workers by resources, and kills one worker
node under the `retrieval` load; a new worker joins `--replace-after` seconds
later. The report adds the nodes, where every replica ran before and after,
and the success rate while the node was gone.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from rich.console import Console

from cluster import local
from cluster.faults import ENGINE, ReplicaKiller
from deployments.router.feedback import FEEDBACK_FILE, FeedbackLog
from loadtest.auth import add_api_key_argument, api_key_from, auth_headers
from loadtest.chaos import ChaosPlan, chaos_report, run_chaos, write_chaos_report
from loadtest.scenario import load_scenario
from loadtest.traffic import TrafficData

__all__ = ["register"]

console = Console()
DEFAULT_TARGETS = ("Encoder", "ShardRetriever", "Reranker")


def cmd_chaos(args: argparse.Namespace) -> int:
    if args.nodes:
        return _node_chaos(args)
    _, cfg = local.render_serve_config(args.config, data_dir=args.data or None)
    code, _ = local.health(args.url)
    if code != 200:
        console.print(f"[red]error:[/] {args.url}/v1/health is not ready (`llmrec up` first)")
        return 2
    scenario = load_scenario(args.scenario)
    traffic = TrafficData.from_data_dir(cfg.data_path, extra_queries=scenario.queries)
    targets = tuple(args.targets) + ((ENGINE,) if args.engine else ())
    plan = ChaosPlan(
        duration_s=args.duration,
        steady_s=args.steady,
        kill_every_s=args.kill_every,
        targets=targets,
        seed=args.seed,
    )
    feedback = FeedbackLog(cfg.data_path / FEEDBACK_FILE)
    console.print(
        f"chaos: {plan.duration_s:.0f} s of load on {args.url}, a kill every "
        f"{plan.kill_every_s:.0f} s after {plan.steady_s:.0f} s, targets {', '.join(targets)}"
    )
    run = asyncio.run(
        run_chaos(
            args.url,
            scenario,
            traffic,
            plan,
            ReplicaKiller(seed=args.seed),
            feedback_recorded=feedback.recorded,
            headers=auth_headers(api_key_from(args.api_key)),
            progress=console.print,
        )
    )
    report = chaos_report(run)
    out = Path(args.out or f"out/chaos/chaos-{time.strftime('%Y%m%d-%H%M%S')}")
    paths = write_chaos_report(report, out)
    console.print(
        f"success {report['success_no_retry']:.2%} without retry, "
        f"{report['success_one_retry']:.2%} with one; degraded {report['degraded_share']:.2%}; "
        f"p99 {report['p99_chaos_ms']:.0f} ms vs {report['p99_steady_ms']:.0f} steady "
        f"({report['p99_ratio']}x); slowest recovery {report['recovery_s_max']} s; "
        f"writes lost {report['writes_lost']} of {report['writes_acknowledged']}"
    )
    console.print(f"report: {paths['markdown']}  {paths['json']}  {paths['plot']}")
    return 0 if report["writes_lost"] == 0 else 1


def _node_chaos(args: argparse.Namespace) -> int:
    from cluster.multinode import node_kill_run

    report = node_kill_run(
        args.config,
        data_dir=args.data or None,
        workers=args.nodes,
        duration_s=args.duration,
        steady_s=args.steady,
        replace_after_s=args.replace_after,
        progress=console.print,
    )
    out = Path(args.out or f"out/chaos/nodes-{time.strftime('%Y%m%d-%H%M%S')}")
    paths = write_chaos_report(report, out)
    gone = report["success_while_node_gone"]
    console.print(
        f"{report['killed_node']} killed: success {report['success_no_retry']:.2%} over the run, "
        f"{'–' if gone is None else f'{gone:.2%}'} while it was gone; degraded "
        f"{report['degraded_stages'] or 'none'}; ready again after {report['recovery_s_max']} s"
    )
    console.print(f"report: {paths['markdown']}  {paths['json']}  {paths['plot']}")
    return 0 if report["unrecovered_kills"] == 0 else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `llmrec chaos` to the CLI."""
    s = subparsers.add_parser(
        "chaos",
        help="kill replicas under load; report success, p99, recovery and lost writes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    add_api_key_argument(s)
    s.add_argument("--data", help="dataset folder (default: the config's data_dir)")
    s.add_argument("--scenario", default="chaos", help="load scenario (default: chaos)")
    s.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    s.add_argument("--steady", type=float, default=60.0, help="seconds before the first kill")
    s.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills")
    s.add_argument(
        "--targets",
        nargs="+",
        default=list(DEFAULT_TARGETS),
        help="deployments (name prefixes) to kill in turn (default: %(default)s)",
    )
    s.add_argument("--engine", action="store_true", help="also kill the vLLM engine process")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="start a head and this many worker nodes here, deploy, kill a worker node",
    )
    s.add_argument(
        "--replace-after",
        type=float,
        default=15.0,
        help="with --nodes: seconds until a new worker joins (default 15)",
    )
    s.add_argument("--out", help="report folder (default: out/chaos/chaos-<time>)")
    s.set_defaults(func=cmd_chaos)
