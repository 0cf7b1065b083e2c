"""Load-test math against hand-computed cases: percentiles, goodput, reports, CSV, parsing."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from cluster.loadtest_cmd import parse_sets
from cluster.local import merge_overrides, replicas_running
from cluster.sweep_deploy import logical_cpus_needed, plan_points, settled
from loadtest.errors import LoadtestError, TargetRefused
from loadtest.locust_csv import HISTORY_COLUMNS, STATS_COLUMNS, write_locust_csv
from loadtest.report import build_report, headline_step
from loadtest.runner import RunResult, check_target
from loadtest.scenario import Scenario, TaskSpec, builtin_scenarios, load_scenario
from loadtest.stats import RequestRecord, Summary, percentile, summarize
from loadtest.sweep import Deployed, PointResult, SweepPoint, parse_sweep
from retrieval.config import AppConfig


def rec(ms: float, status: int = 200, *, start: float = 0.0, step: int = 0, **kw) -> RequestRecord:
    outcome = kw.pop("outcome", "ok" if 200 <= status < 300 else "error")
    return RequestRecord(
        name=kw.pop("name", "recommend:user"),
        method="POST",
        start_s=start,
        latency_ms=ms,
        status=status,
        outcome=outcome,
        step=step,
        **kw,
    )


def scenario(**kw) -> Scenario:
    return Scenario(tasks=[TaskSpec(kind="user")], **kw)


# -- percentiles and summaries -------------------------------------------------------------


@pytest.mark.parametrize(
    "values, q, expected",
    [
        (list(range(1, 11)), 50, 5),  # rank ceil(5) = 5
        (list(range(1, 11)), 90, 9),
        (list(range(1, 11)), 99, 10),  # rank ceil(9.9) = 10
        (list(range(1, 11)), 0, 1),
        (list(range(1, 101)), 99, 99),
        (list(range(1, 101)), 99.9, 100),
        ([7.0], 50, 7.0),
        ([], 99, 0.0),
    ],
)
def test_percentile_is_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


def test_percentile_rejects_out_of_range_q():
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_goodput_counts_only_fast_undegraded_successes():
    records = [
        rec(100),
        rec(200),
        rec(300),  # over the 250 ms SLO
        rec(50, degraded=("rerank",)),  # fast but skipped work
        rec(20, 503),
        rec(30, 0, outcome="error", error="ReadTimeout"),
        rec(0, 0, outcome="dropped", error="dropped"),
        rec(5, 404, outcome="unsupported", name="feedback"),
    ]
    s = summarize(records, duration_s=2.0, slo_ms=250)
    assert (s.sent, s.ok, s.errors, s.dropped, s.unsupported) == (8, 4, 2, 1, 1)
    assert s.throughput_rps == 2.0  # 4 successes / 2 s
    assert s.goodput_rps == 1.0  # 100 and 200 ms only
    assert s.error_rate == pytest.approx(3 / 7)  # 503, timeout, dropped over 4 ok + 3 failed
    assert s.degraded_rate == 0.25
    assert s.errors_by_status == {"503": 1, "ReadTimeout": 1, "dropped": 1}
    # latencies of answered requests: 20 30 50 100 200 300
    assert (s.min_ms, s.p50_ms, s.p99_ms, s.max_ms) == (20, 50, 300, 300)
    assert s.mean_ms == pytest.approx(700 / 6)


def test_stage_means_come_from_successful_answers():
    records = [
        rec(10, timings={"encode": 2.0, "retrieve": 4.0, "total": 8.0}),
        rec(20, timings={"encode": 4.0, "retrieve": 6.0, "total": 12.0}),
        rec(30, 500),
    ]
    s = summarize(records, duration_s=1.0, slo_ms=100)
    assert s.stage_ms == {"encode": 3.0, "retrieve": 5.0, "total": 10.0}


def test_meets_slo_needs_p99_and_error_budget():
    s = summarize([rec(100)] * 99 + [rec(100, 500)], duration_s=1, slo_ms=200)
    assert s.meets_slo(200, max_error_rate=0.01)
    assert not s.meets_slo(99, max_error_rate=0.01)
    assert not s.meets_slo(200, max_error_rate=0.005)
    assert not Summary(duration_s=1).meets_slo(200, 1.0)  # nothing answered


# -- reports -------------------------------------------------------------------------------


def fake_point(gpus: int, steps: list[tuple[float, float]], slo: float = 100.0) -> PointResult:
    """A point whose step i served `rps` successes/s, all at `ms` latency, over 10 s."""
    sc = scenario(users=[1] * len(steps), duration_s=10.0 * len(steps), warmup_s=0, slo_p99_ms=slo)
    records, windows = [], []
    for i, (rps, ms) in enumerate(steps):
        windows.append((10.0 * i, 10.0 * (i + 1)))
        records += [rec(ms, start=10.0 * i + j / max(rps, 1), step=i) for j in range(int(rps * 10))]
    run = RunResult(sc, records, 0.0, 0.0, windows, "duration")
    point = SweepPoint(replicas=gpus, gpus=gpus, label=f"gpus={gpus}")
    return PointResult(point, Deployed("http://x"), run, run.step_summaries(), run.total_summary())


def test_headline_step_is_fastest_step_meeting_the_slo():
    steps = [
        summarize([rec(50)] * 10, duration_s=1, slo_ms=100),
        summarize([rec(80)] * 20, duration_s=1, slo_ms=100),
        summarize([rec(150)] * 30, duration_s=1, slo_ms=100),  # most throughput, misses SLO
    ]
    assert headline_step(steps, 100, 0.01) == (1, True)
    assert headline_step(steps, 10, 0.01) == (1, False)  # none meets: the best goodput (at 100 ms)


def test_report_scaling_efficiency_cost_and_min_gpus():
    results = [
        fake_point(1, [(5, 50), (10, 80)]),
        fake_point(2, [(10, 50), (18, 90)]),
        fake_point(4, [(20, 50), (30, 95), (40, 300)]),
    ]
    sc = results[0].run.scenario
    report = build_report(
        results,
        scenario=sc,
        axis="gpus",
        gpu_standin=False,
        gpu_hour_usd=3.6,
        target_rps=15,
    )
    thr = [p["throughput_rps"] for p in report["points"]]
    # The last step runs until its last answer (+ latency), hence approx.
    assert thr == pytest.approx([10.0, 18.0, 30.0], rel=0.01)  # 40 rps misses the SLO
    peaks = [p["peak_throughput_rps"] for p in report["points"]]
    assert peaks == pytest.approx([10.0, 18.0, 40.0], rel=0.03)
    efficiency = [p["scaling_efficiency"] for p in report["points"]]
    assert efficiency == pytest.approx([1.0, 0.9, 0.75], rel=0.01)
    assert report["scaling_efficiency"] == efficiency[-1]
    # 2 GPUs x $3.6/h = $0.002/s; at 18 rps: 0.002 / 18 * 1000
    assert report["min_gpus_for_target"] == 2
    assert report["cost_per_1k_requests"] == pytest.approx(2 * 3.6 / 3600 / 18 * 1000, rel=0.01)
    assert report["points"][0]["cost_per_1k_requests"] == pytest.approx(0.1, rel=0.01)
    first = report["points"][0]
    for key, kind in {
        "replicas": int,
        "gpus": int,
        "throughput_rps": float,
        "goodput_rps": float,
        "p50_ms": float,
        "p99_ms": float,
        "error_rate": float,
    }.items():
        assert isinstance(first[key], kind), key


def test_report_estimates_gpus_when_no_point_reaches_the_target():
    results = [fake_point(1, [(10, 50)]), fake_point(2, [(16, 50)])]
    report = build_report(
        results,
        scenario=results[0].run.scenario,
        axis="gpus",
        gpu_standin=True,
        gpu_hour_usd=1.0,
        target_rps=95,
    )
    assert report["min_gpus_for_target"] is None
    assert report["min_gpus_for_target_estimate"] == math.ceil(95 / 10)  # best per GPU: 10 rps


# -- Locust CSV ----------------------------------------------------------------------------


def test_locust_csv_has_locust_columns_and_totals(tmp_path: Path):
    sc = scenario(duration_s=2.0, warmup_s=0)
    records = [rec(10 * (i + 1), start=i * 0.2, size=100) for i in range(10)]
    records.append(rec(5, 503, start=1.0, error="HTTP 503"))
    run = RunResult(sc, records, 1_700_000_000.0, 0.0, [(0.0, 2.0)], "duration")
    stats, history, failures, exceptions = write_locust_csv(tmp_path / "run", run)
    assert stats.name == "run_stats.csv" and history.name == "run_stats_history.csv"
    rows = list(csv.reader(stats.open()))
    assert rows[0] == STATS_COLUMNS
    assert rows[0][11:] == ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%"] + [
        "99.99%",
        "100%",
    ]
    total = dict(zip(rows[0], rows[-1], strict=True))
    assert total["Name"] == "Aggregated" and total["Type"] == ""
    assert total["Request Count"] == "11" and total["Failure Count"] == "1"
    assert float(total["Requests/s"]) == 5.5
    assert total["Max Response Time"] == "100" and total["100%"] == "100"
    hist = list(csv.DictReader(history.open()))
    assert list(hist[0]) == HISTORY_COLUMNS
    assert hist[-1]["Total Request Count"] == "11"
    assert int(hist[0]["Timestamp"]) == 1_700_000_001
    assert list(csv.reader(failures.open()))[1] == ["POST", "recommend:user", "HTTP 503", "1"]
    assert list(csv.reader(exceptions.open())) == [["Count", "Message", "Traceback", "Nodes"]]


# -- parsing and guards --------------------------------------------------------------------


def test_shipped_scenarios_load_and_keep_feedback_off():
    names = builtin_scenarios()
    assert {"retrieval", "rerank", "full", "chaos"} <= set(names)
    for name in names:
        sc = load_scenario(name)
        if name == "chaos":  # writes are what a chaos run checks are not lost
            assert {"feedback", "upsert"} <= {t.kind for t in sc.tasks if t.weight > 0}
            assert sc.retry_failed
            continue
        assert all(t.weight == 0 for t in sc.tasks if t.kind in ("feedback", "upsert")), name
    assert not any(t.rerank or t.explain for t in load_scenario("retrieval").tasks)
    assert all(t.rerank for t in load_scenario("rerank").tasks if t.kind != "feedback")
    assert all(t.explain for t in load_scenario("full").tasks if t.kind != "feedback")
    demo = load_scenario("demo")  # what `make demo` asks: both LLM stages, default deadline
    assert demo.max_requests == 10 and demo.users == [1]
    assert all(t.rerank and t.explain and t.deadline_ms is None for t in demo.tasks if t.weight)


def test_bad_scenario_names_the_field(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("tasks: [{kind: user, weight: 1}]\nduration_s: -1\n")
    with pytest.raises(LoadtestError, match="duration_s"):
        load_scenario(path)
    path.write_text("tasks: [{kind: user, weight: 0}]\n")
    with pytest.raises(LoadtestError, match="weight above 0"):
        load_scenario(path)
    with pytest.raises(LoadtestError, match="no such file"):
        load_scenario("no-such-scenario")


@pytest.mark.parametrize(
    "spec, expected",
    [("gpus=1,2,4", ("gpus", [1, 2, 4])), ("replicas=2,1,2", ("replicas", [1, 2]))],
)
def test_parse_sweep(spec, expected):
    assert parse_sweep(spec) == expected


@pytest.mark.parametrize("spec", ["tpus=1,2", "gpus=", "gpus=0,1", "gpus=a", "replicas"])
def test_parse_sweep_refuses(spec):
    with pytest.raises(LoadtestError):
        parse_sweep(spec)


def test_only_local_targets_unless_allowed():
    assert check_target("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_target("http://localhost:9000") == "http://localhost:9000"
    with pytest.raises(TargetRefused, match="--allow-host example.com"):
        check_target("http://example.com")
    assert check_target("https://example.com", ["example.com"]) == "https://example.com"
    with pytest.raises(TargetRefused):
        check_target("ftp://127.0.0.1")


def test_parse_sets_builds_nested_typed_overrides():
    assert parse_sets(["reranker.enabled=false", "encoder.max_batch_size=32"]) == {
        "reranker": {"enabled": False},
        "encoder": {"max_batch_size": 32},
    }
    with pytest.raises(LoadtestError):
        parse_sets(["nonsense"])


def test_plan_points_on_cpu_replicas_stand_in_for_gpus():
    cfg = AppConfig()
    plan = plan_points("gpus", [1, 2], cfg, gpus_available=False, encoder_gpu_share=0.25)
    assert [(p.replicas, p.gpus, p.label) for p, _ in plan] == [(1, 1, "gpus=1"), (2, 2, "gpus=2")]
    assert plan[1][1] == {
        "encoder": {"num_replicas": 2, "autoscaling": None, "num_gpus": 0},
        "reranker": {"num_replicas": 2, "num_gpus": 0},
    }
    no_rr = AppConfig.model_validate({"reranker": {"enabled": False}})
    assert plan_points("replicas", [4], no_rr, gpus_available=False, encoder_gpu_share=0.25)[0][
        1
    ] == {"encoder": {"num_replicas": 4, "autoscaling": None, "num_gpus": 0}}


def test_a_sweep_point_has_a_fixed_pool_even_when_the_config_autoscales():
    cfg = AppConfig.model_validate({"encoder": {"autoscaling": {"max_replicas": 4}}})
    ((_, overrides),) = plan_points("replicas", [2], cfg, gpus_available=False, encoder_gpu_share=0)
    merged = AppConfig.model_validate(merge_overrides(cfg.model_dump(), overrides))
    assert merged.encoder.deployment_options()["num_replicas"] == 2
    assert "autoscaling_config" not in merged.encoder.deployment_options()


def test_plan_points_with_gpus_packs_encoder_and_reranker_per_gpu():
    cfg = AppConfig()
    ((point, overrides),) = plan_points(
        "gpus", [2], cfg, gpus_available=True, encoder_gpu_share=0.25
    )
    assert point.gpus == 2
    assert overrides["encoder"]["num_gpus"] == 0.25 and overrides["reranker"]["num_gpus"] == 0.75
    cfg = AppConfig.model_validate({"encoder": {"num_gpus": 1}, "reranker": {"num_gpus": 1}})
    ((point, _),) = plan_points("replicas", [3], cfg, gpus_available=True, encoder_gpu_share=0.25)
    assert point.gpus == 6


def test_logical_cpus_cover_the_largest_point():
    cfg = AppConfig()  # encoder 0.5 + reranker 0.5 per replica, router 0.2, shards 0.1
    assert logical_cpus_needed(cfg, 4, 4) >= math.ceil(4 * 1.0 + 0.4 + 0.4)


def serve_status(app_state: str, deployed_at: float, **replicas: dict[str, int]) -> dict:
    """A `serve status` answer (the YAML it prints, parsed) for the llmrec app."""
    return {
        "applications": {
            "llmrec": {
                "status": app_state,
                "message": "",
                "last_deployed_time_s": deployed_at,
                "deployments": {
                    name: {"status": "HEALTHY", "replica_states": states}
                    for name, states in replicas.items()
                },
            }
        }
    }


def test_sweep_waits_until_serve_runs_exactly_the_new_replicas():
    new = {"Encoder": 2, "Reranker": 2}
    stale = serve_status("RUNNING", 100.0, Encoder={"RUNNING": 1}, Reranker={"RUNNING": 1})
    assert settled(stale, new, since=200.0) == (False, "the new config is not applied yet")
    scaling = serve_status(
        "DEPLOYING", 250.0, Encoder={"RUNNING": 2}, Reranker={"RUNNING": 1, "STARTING": 1}
    )
    done, why = settled(scaling, new, since=200.0)
    assert not done and "Reranker" in why
    ready = serve_status(
        "RUNNING", 250.0, Encoder={"RUNNING": 2, "STOPPING": 0}, Reranker={"RUNNING": 2}
    )
    assert settled(ready, new, since=200.0) == (True, "ready")
    assert replicas_running(ready, "llmrec") == {"Encoder": 2, "Reranker": 2}
    assert replicas_running({"applications": {}}, "llmrec") is None
    with pytest.raises(LoadtestError, match="DEPLOY_FAILED"):
        settled(serve_status("DEPLOY_FAILED", 250.0), new, since=200.0)
