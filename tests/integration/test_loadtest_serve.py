"""A short sweep over the real app on Ray Serve: replicas 1 then 2, real traffic, real report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from ray import serve

from deployments.app import build_app
from loadtest.report import build_report, write_report
from loadtest.scenario import load_scenario
from loadtest.sweep import Deployed, SweepPoint, run_sweep
from loadtest.traffic import TrafficData


def running_replicas(app: str = "llmrec") -> dict[str, int]:
    deployments = serve.status().applications[app].deployments
    return {name: d.replica_states.get("RUNNING", 0) for name, d in deployments.items()}


@pytest.mark.slow
def test_replica_sweep_over_real_serve(ray_cluster, demo_dir, tmp_path: Path):
    def deploy(point: SweepPoint) -> Deployed:
        args = {
            "data_dir": str(demo_dir),
            "reranker": {"enabled": False},
            "encoder": {"num_replicas": point.replicas},
        }
        serve.run(build_app(args), name="llmrec", route_prefix="/")
        return Deployed(ray_cluster, running_replicas())

    scenario = load_scenario("retrieval").with_overrides(
        users=[4], duration_s=3, warmup_s=1, slo_p99_ms=2000
    )
    traffic = TrafficData.from_data_dir(demo_dir, extra_queries=scenario.queries)
    points = [SweepPoint(n, n, f"replicas={n}") for n in (1, 2)]
    try:
        results, error = asyncio.run(
            run_sweep(points, deploy, scenario, traffic, out_dir=tmp_path, log=lambda _: None)
        )
    finally:
        serve.delete("llmrec")
    assert error is None
    report = build_report(
        results, scenario=scenario, axis="replicas", gpu_standin=True, gpu_hour_usd=1.0
    )
    write_report(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [p["replicas_seen"]["Encoder"] for p in saved["points"]] == [1, 2]
    for p in saved["points"]:
        # Real users, histories and queries from the dataset: every request is answered.
        assert p["error_rate"] == 0 and p["throughput_rps"] > 1, p
        assert {"encode", "retrieve", "total"} <= set(p["stage_ms"])
        assert p["p50_ms"] <= p["p99_ms"] <= p["max_ms"]
    for name in ("report.md", "report.html", "throughput_vs_gpus.png", "replicas-2_stats.csv"):
        assert (tmp_path / name).exists()
