"""The capacity model (`loadtest/capacity.py`) against hand-computed bounds, the CPU roles of
`cluster/cpu_probe.py`, and the runner's cores-busy windows."""

from __future__ import annotations

import pytest

from cluster.cpu_probe import ServeCpuProbe, role_of
from loadtest.capacity import HOST, LOOP, Layout, predict, prediction_table
from loadtest.runner import RunResult
from loadtest.scenario import load_scenario

LAYOUT = Layout(
    scaled=("Encoder",),
    fixed={"Router": 1, "ShardRetriever": 1, "proxy": 1},
    cores_per_replica={"Encoder": 2.0},
    host_cores=8.0,
)


def step(load, rps, mean_ms=20.0, cpu=None, stages=None):
    return {
        "load": load,
        "throughput_rps": rps,
        "mean_ms": mean_ms,
        "cpu_cores": cpu or {},
        "stage_ms": stages or {},
    }


def point(n, steps):
    return {"label": f"replicas={n}", "replicas": n, "steps": steps}


def test_an_encoder_bound_point_scales_until_the_host_binds():
    # At 100 rps the encoder keeps 1.6 cores busy: 16 ms of CPU per request; a replica has
    # 2 cores, so 125 rps each. The router's 3.5 ms: 285.7 rps for its one replica. The
    # host: 30 ms of CPU per request in all, and 90% of its 8 cores usable: 240 rps.
    cpu = {"Encoder": 1.6, "Router": 0.35, "ShardRetriever": 0.2, "proxy": 0.3, HOST: 3.0}
    base = point(1, [step(32, 100.0, mean_ms=25.0, cpu=cpu)])
    more = [point(2, [step(32, 230.0)]), point(4, [step(32, 236.0)])]
    model = predict([base, *more], LAYOUT, think_s=0.0)
    rows = {r["replicas"]: r for r in model["points"]}
    assert model["demand_source"] == "cpu"
    assert model["demand_ms"]["Encoder"] == pytest.approx(16.0)
    assert rows[1]["bottleneck"] == "Encoder"
    assert rows[1]["predicted_rps"] == pytest.approx(125.0, abs=0.01)
    assert rows[2]["bounds_rps"]["Encoder"] == pytest.approx(250.0, abs=0.1)
    assert rows[2]["bottleneck"] == HOST
    assert rows[2]["predicted_rps"] == pytest.approx(240.0, abs=0.01)
    assert rows[4]["bounds_rps"]["Router"] == pytest.approx(285.7, abs=0.1)
    assert rows[4]["bounds_rps"][LOOP] == pytest.approx(1280.0)  # 32 users / 25 ms
    assert rows[4]["error"] == pytest.approx(240.0 / 236.0 - 1.0, abs=1e-3)


def test_replicas_that_each_see_less_are_charged_the_demand_of_that_rate():
    # The encoder's cores grow by 2 ms per request past 100 rps (0.6 cores there), so one
    # replica of one core tops out at 300 rps. Two replicas each see half the rate: the
    # host (1.8 usable cores, 0.1 of them other work) holds them to 2 * 0.85 cores, 225 rps
    # each.
    steps = [
        step(4, 50.0, mean_ms=20.0, cpu={"Encoder": 0.5, HOST: 0.6}),
        step(16, 100.0, cpu={"Encoder": 0.6, HOST: 0.7}),
    ]
    layout = Layout(scaled=("Encoder",), cores_per_replica={"Encoder": 1.0}, host_cores=2.0)
    model = predict([point(1, steps), point(2, [step(16, 400.0)])], layout)
    one, two = model["points"]
    assert one["bottleneck"] == "Encoder"
    assert one["predicted_rps"] == pytest.approx(300.0, abs=0.5)
    assert two["bottleneck"] == HOST
    assert two["predicted_rps"] == pytest.approx(450.0, abs=0.5)


def test_a_saturated_host_predicts_no_gain_from_more_replicas():
    cpu = {"Encoder": 1.0, "Router": 0.5, HOST: 2.0}  # every core of a 2-core host busy
    small = Layout(scaled=("Encoder",), cores_per_replica={"Encoder": 2.0}, host_cores=2.0)
    model = predict([point(1, [step(16, 50.0, cpu=cpu)]), point(4, [step(16, 48.0)])], small)
    (one, four) = model["points"]
    assert one["bottleneck"] == four["bottleneck"] == HOST
    assert four["predicted_rps"] == pytest.approx(50.0)
    assert "| replicas=4 | 48.0 | 50.0 | +4.2% | host |" in prediction_table(model)


def test_without_cpu_samples_the_stage_times_are_the_demands():
    base = point(1, [step(8, 40.0, stages={"encode": 10.0, "retrieve": 5.0, "other": 99.0})])
    model = predict([base, point(3, [step(8, 100.0)])], LAYOUT)
    assert model["demand_source"] == "stage"
    assert model["demand_ms"] == {"Encoder": 10.0, "ShardRetriever": 5.0}
    rows = {r["replicas"]: r for r in model["points"]}
    assert rows[1]["predicted_rps"] == pytest.approx(200.0)  # 2 cores / 10 ms
    assert rows[3]["bottleneck"] == "ShardRetriever"  # 3 encoders: 600; one retriever: 200


def test_nothing_measured_is_said_plainly():
    model = predict([point(1, [step(4, 0.0)])], LAYOUT)
    assert "no point" in model["error"]
    assert "no point" in prediction_table(model)[0]


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        (["ray::ServeReplica:llmrec:Encoder"], "Encoder"),
        (["ray::ServeReplica:llmrec:ShardRetriever-3.search_ids"], "ShardRetriever"),
        (["ray::ServeReplica:other:Encoder"], None),
        (["VLLM::EngineCore"], "Reranker"),
        (["ray::ServeReplica:llmrec:Reranker.check_health"], "Reranker"),
        (["ray::ProxyActor"], "proxy"),
        (["ray::HAProxyManager"], "proxy"),
        (["/usr/sbin/haproxy", "-f", "x.cfg"], "proxy"),
        (["/venv/lib/ray/core/src/ray/raylet/raylet", "--node_id=1"], "ray"),
        (["ray::ServeController"], "ray"),
        (["python", "train.py"], None),
        ([], None),
        (None, None),  # a process psutil may not read
    ],
)
def test_processes_are_given_their_role(cmdline, role):
    assert role_of(cmdline, "llmrec") == role


def test_the_probe_counts_this_process_as_the_load_generator_and_the_host():
    used = ServeCpuProbe()()
    assert used["loadgen"] > 0 and used[HOST] >= used["loadgen"]


def test_cores_busy_come_from_the_samples_inside_a_window():
    samples = [(0.5, {"Encoder": 1.0}), (1.0, {"Encoder": 1.5}), (3.0, {"Encoder": 3.5})]
    scenario = load_scenario("retrieval")
    run = RunResult(scenario, [], 0.0, 0.0, [], "duration", cpu_samples=samples)
    assert run.cpu_cores(0.9, 3.1) == {"Encoder": 1.0}  # 2 CPU-seconds over 2 s
    assert run.cpu_cores(2.0, 2.5) == {}  # fewer than two samples inside
