"""A multi-node run on one machine: a head and worker nodes, the app spread over them by
resources, one worker lost under load and replaced.

`node_kill_run` starts a `LocalCluster` (a head without the shard resource, `workers` nodes
with it) and deploys the app from `ray_config.yaml` placed by resources: retriever replicas
ask for a whole unit of `placement.SHARD_RESOURCE`, so they run only on the workers, one per
worker; the router and the encoder ask for `HEAD_RESOURCE`. It records where Serve placed
every replica, runs the chaos load (`loadtest.chaos.run_chaos`) and kills one worker (SIGKILL
of its raylet and every process of it) after `steady_s`. Its shards are answered
`degraded` while they have no replica; after `replace_after_s` a new worker joins (as an
autoscaler or KubeRay would bring one), Serve places the lost replica there and the
service is whole again. The report is the chaos report plus the nodes, the placement
before and after, and the success rate while the node was gone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from cluster import local
from cluster.bench.driver import free_port
from cluster.nodes import LocalCluster, replica_placement
from cluster.placement import SHARD_RESOURCE
from loadtest.chaos import ChaosPlan, chaos_report, run_chaos
from loadtest.scenario import load_scenario
from loadtest.traffic import TrafficData
from retrieval.shards import ShardLayout, load_manifest

__all__ = ["HEAD_RESOURCE", "node_kill_run"]

HEAD_RESOURCE = "llmrec_head"
"""What the head of this run declares and the router and encoder ask for: they stay on the
head (here it stands for the GPU nodes), so the run loses shards only, never the ingress."""


def node_kill_run(
    config_path: Path = local.DEFAULT_CONFIG,
    *,
    data_dir: Path | str | None = None,
    workers: int = 2,
    duration_s: float = 60.0,
    steady_s: float = 15.0,
    replace_after_s: float = 15.0,
    users: int = 4,
    http_port: int | None = None,
    overrides: dict[str, Any] | None = None,
    progress=print,
) -> dict[str, Any]:
    """Run the module docstring's experiment; returns its report (JSON-ready).

    `data_dir` may be a storage URI (every node then mirrors it, `retrieval/artifacts.py`);
    `overrides` are laid over the app's args after this run's own placement."""
    placed = {
        "reranker": {"enabled": False},  # the LLM is not what this run is about
        "encoder": {"autoscaling": None, "num_replicas": 1, "resources": {HEAD_RESOURCE: 0.01}},
        "router": {"resources": {HEAD_RESOURCE: 0.01}},
    }
    _, cfg = local.render_serve_config(
        config_path, data_dir=data_dir, overrides=local.merge_overrides(placed, overrides or {})
    )
    n_shards = load_manifest(cfg.index_path).n_shards
    per_replica = max(1, -(-n_shards // workers))  # ceil: one retriever replica per worker
    shards = {"retriever": {"shards_per_replica": per_replica, "resources": {SHARD_RESOURCE: 1.0}}}
    overrides = local.merge_overrides(local.merge_overrides(placed, shards), overrides or {})
    serve_overrides = {
        # One proxy: every node of this machine would bind the same HTTP port.
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port or free_port()},
    }
    scenario = load_scenario("retrieval").with_overrides(
        users=[users], think_time_s=[0.05, 0.2], duration_s=duration_s
    )
    traffic = TrafficData.from_data_dir(cfg.data_path, extra_queries=scenario.queries)
    with LocalCluster(head_cpus=1, head_resources={HEAD_RESOURCE: 1.0}) as cluster:
        for i in range(workers):
            cluster.add_worker(f"worker-{i + 1}", resources={SHARD_RESOURCE: 1.0})
        progress(f"head {cluster.address} and {workers} workers up")
        url = local.up(
            config_path,
            data_dir=data_dir,
            address=cluster.dashboard,
            overrides=overrides,
            serve_overrides=serve_overrides,
        )
        before = replica_placement(cluster.dashboard, cluster.address)
        names = _node_names(cluster)
        progress(_placement_lines(before, names))
        victim = _worker_with_shards(cluster, before)
        killed_at: list[float] = []
        timers: list[threading.Timer] = []

        def kill(_target: str) -> str:
            what = victim.kill()
            killed_at.append(time.perf_counter())
            timers.append(threading.Timer(replace_after_s, _replace, (cluster,)))
            timers[-1].start()
            return what

        plan = ChaosPlan(
            duration_s=duration_s,
            steady_s=steady_s,
            kill_every_s=duration_s,  # one kill
            targets=(victim.name,),
            recover_timeout_s=duration_s,
        )
        started = time.perf_counter()
        run = asyncio.run(run_chaos(url, scenario, traffic, plan, kill, progress=progress))
        for timer in timers:
            timer.join()
        after = replica_placement(cluster.dashboard, cluster.address)
        names = _node_names(cluster)
        progress(_placement_lines(after, names))
        report = chaos_report(run)
        lost_from = (killed_at[0] - started) if killed_at else duration_s
        gone = [
            r
            for r in run.result.records
            if r.answered and lost_from <= r.start_s < lost_from + replace_after_s
        ]
        report.update(
            {
                "nodes": [
                    {"name": names.get(n["node_id"], "?"), **_node_row(n)} for n in cluster.nodes()
                ],
                "placement_before": [{**r, "node": names.get(r["node_id"], "?")} for r in before],
                "placement_after": [{**r, "node": names.get(r["node_id"], "?")} for r in after],
                "killed_node": victim.name,
                "replace_after_s": replace_after_s,
                "success_while_node_gone": round(
                    sum(r.outcome == "ok" for r in gone) / len(gone), 5
                )
                if gone
                else None,
                "degraded_while_node_gone": round(
                    sum(r.outcome == "ok" and bool(r.degraded) for r in gone) / len(gone), 5
                )
                if gone
                else None,
                "shard_layout": ShardLayout(n_shards, per_replica).n_replicas,
            }
        )
    return report


def _replace(cluster: LocalCluster) -> None:
    cluster.add_worker(f"worker-{len(cluster.workers) + 1}", resources={SHARD_RESOURCE: 1.0})


def _node_names(cluster: LocalCluster) -> dict[str, str]:
    names = {w.node_id: w.name for w in cluster.workers}
    for node in cluster.nodes():
        if node.get("is_head_node"):
            names[node["node_id"]] = "head"
    return names


def _worker_with_shards(cluster: LocalCluster, placement: list[dict[str, Any]]):
    shard_nodes = {r["node_id"] for r in placement if r["deployment"].startswith("ShardRetriever")}
    for worker in cluster.workers:
        if worker.node_id in shard_nodes:
            return worker
    raise local.ClusterError("no worker runs a retriever replica; check the shard resource")


def _node_row(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "node_id": node["node_id"],
        "state": node["state"],
        "head": bool(node.get("is_head_node")),
        "resources": {
            k: v
            for k, v in (node.get("resources_total") or {}).items()
            if not k.startswith("node:") and k not in ("memory", "object_store_memory")
        },
    }


def _placement_lines(rows: list[dict[str, Any]], names: dict[str, str]) -> str:
    return "\n".join(
        f"  {r['deployment']:<18} {r['state']:<9} on {names.get(r['node_id'], '?'):<9} "
        f"(node {str(r['node_id'])[:8]}, pid {r['pid']})"
        for r in rows
    )
