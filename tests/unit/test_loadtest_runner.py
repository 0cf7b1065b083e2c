"""The load generator against a local stand-in server: rates, bounds, sweeps, reports, CLI."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.bench.driver import free_port
from cluster.cli import main as llmrec
from loadtest.errors import TargetRefused
from loadtest.report import build_report, write_report
from loadtest.runner import LoadRunner
from loadtest.scenario import Scenario, TaskSpec
from loadtest.sweep import Deployed, SweepPoint, run_sweep
from loadtest.traffic import TrafficData
from loadtest.transport import AiohttpTransport


@pytest.fixture(scope="module")
def fake_url():
    """`python -m loadtest.fake_server` on a free local port, in its own process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.fake_server", "--port", str(port), "--service-ms", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("fake server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def configure(url: str, **knobs) -> None:
    """Set the fake server's replicas/service time and zero its counters."""
    httpx.post(f"{url}/_fake/config", json=knobs, timeout=5).raise_for_status()


def server_stats(url: str) -> dict:
    return httpx.get(f"{url}/_fake/stats", timeout=5).json()


def scenario(**kw) -> Scenario:
    kw.setdefault("tasks", [TaskSpec(kind="user"), TaskSpec(kind="query")])
    kw.setdefault("warmup_s", 0)
    return Scenario(**kw)


@pytest.fixture(scope="module")
def traffic() -> TrafficData:
    return TrafficData.synthetic(n_users=50, n_items=200)


def run(url: str, sc: Scenario, traffic: TrafficData):
    return asyncio.run(LoadRunner(url, sc, traffic).run())


def test_open_loop_holds_its_target_rate(fake_url, traffic):
    configure(fake_url, replicas=64, service_ms=2)
    sc = scenario(mode="open", rates_rps=[200], duration_s=5, seed=3)
    result = run(fake_url, sc, traffic)
    step = result.step_summaries()[0]
    assert step.offered_rps == pytest.approx(200, rel=0.05)
    assert step.errors == 0 and step.ok == step.sent
    # Every request reached the server, and the sends were spread over the whole window
    # rather than sent in a burst (the answers' timing depends on the host's load, so
    # throughput is left to the sweep test).
    assert server_stats(fake_url)["requests"]["/v1/recommend"] == step.sent
    starts = [r.start_s for r in result.measured]
    assert max(starts) - min(starts) > 4.8
    first_half = sum(s < 2.5 for s in starts)
    assert first_half == pytest.approx(step.sent / 2, rel=0.1)


def test_open_loop_keeps_sending_when_the_service_is_slow(fake_url, traffic):
    """Arrivals do not wait for answers: a service at 1/4 the rate does not slow the sender."""
    configure(fake_url, replicas=1, service_ms=20)  # capacity 50/s
    sc = scenario(mode="open", rates_rps=[100], duration_s=2, seed=1, max_in_flight=1000)
    step = run(fake_url, sc, traffic).step_summaries()[0]
    assert step.offered_rps == pytest.approx(100, rel=0.15)
    assert step.throughput_rps < 60
    assert step.p99_ms > 500  # the queue grows
    configure(fake_url, replicas=64, service_ms=2)


def test_closed_loop_users_and_think_time_bound_the_rate(fake_url, traffic):
    configure(fake_url, replicas=64, service_ms=2)
    # 4 users thinking 0.1 s after ~2-5 ms answers: just under 40 requests/s.
    sc = scenario(users=[4], think_time_s=(0.1, 0.1), duration_s=2, spawn_rate=1000)
    step = run(fake_url, sc, traffic).step_summaries()[0]
    assert 25 <= step.throughput_rps <= 40
    assert server_stats(fake_url)["max_concurrency"] <= 4


def test_load_steps_measure_each_user_count(fake_url, traffic):
    configure(fake_url, replicas=64, service_ms=2)
    sc = scenario(users=[1, 4], think_time_s=(0.05, 0.05), duration_s=3, spawn_rate=1000)
    result = run(fake_url, sc, traffic)
    low, high = result.step_summaries()
    assert [round(a - b, 6) for b, a in result.step_windows] == [1.5, 1.5]
    assert high.throughput_rps > 2.5 * low.throughput_rps


def test_request_count_stops_the_run(fake_url, traffic):
    configure(fake_url, replicas=64, service_ms=2)
    sc = scenario(users=[4], think_time_s=(0, 0), duration_s=30, max_requests=50, warmup_s=0.3)
    t = time.perf_counter()
    result = run(fake_url, sc, traffic)
    assert time.perf_counter() - t < 10
    assert result.stopped_by == "max_requests"
    assert len(result.measured) == 50
    assert result.total_summary().ok == 50


def test_feedback_route_missing_is_unsupported_not_an_error(fake_url, traffic):
    configure(fake_url, replicas=64, service_ms=2)
    tasks = [TaskSpec(kind="feedback", weight=5), TaskSpec(kind="history")]
    sc = scenario(tasks=tasks, users=[2], think_time_s=(0.01, 0.01), duration_s=1)
    result = run(fake_url, sc, traffic)
    total = result.total_summary()
    assert result.unsupported == ["feedback"]
    assert 1 <= total.unsupported <= 2  # each user meets it at most once, then it is off
    assert total.errors == 0 and total.ok > 10


def test_errors_are_counted_by_status(traffic):
    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "query" in body:
            return httpx.Response(503, json={"error": {"type": "unavailable"}})
        return httpx.Response(200, json={"items": [], "degraded": [], "timings_ms": {"total": 1}})

    sc = scenario(users=[2], think_time_s=(0.01, 0.01), duration_s=0.5)
    runner = LoadRunner("http://127.0.0.1:9", sc, traffic, transport=httpx.MockTransport(handler))
    total = asyncio.run(runner.run()).total_summary()
    assert set(total.errors_by_status) == {"503"}
    assert total.errors == total.errors_by_status["503"] > 0
    assert total.error_rate == pytest.approx(total.errors / (total.errors + total.ok))


def test_runner_refuses_remote_targets(traffic):
    with pytest.raises(TargetRefused):
        LoadRunner("http://10.1.2.3:8000", scenario(), traffic)


def test_traffic_comes_from_the_deployed_dataset(tmp_path: Path):
    pq.write_table(
        pa.table(
            {
                "item_id": ["a", "b", "c"],
                "title": ["A", "B", "C"],
                "text": ["A quiet drama about two sisters at sea", "Loud comedy", "Space war epic"],
                "categories": [["Drama"], ["Comedy"], ["Sci-Fi", "Drama"]],
            }
        ),
        tmp_path / "catalog.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user_id": ["u1", "u1", "u2"],
                "item_id": ["b", "a", "c"],
                "ts": pa.array([2, 1, 5], pa.int64()),
            }
        ),
        tmp_path / "interactions.parquet",
    )
    t = TrafficData.from_data_dir(tmp_path, extra_queries=["my query"])
    assert sorted(t.users) == ["u1", "u2"]
    assert t.histories["u1"] == ["a", "b"]  # oldest first
    assert t.categories[0] == "Drama"
    assert t.queries[0] == "my query"
    assert any("sisters" in q or "drama" in q for q in t.queries[1:])


def test_sweep_writes_every_report_file(fake_url, traffic, tmp_path: Path):
    """A two-point sweep with a deploy callback that resizes the stand-in server."""
    deployed = []

    def deploy(point: SweepPoint) -> Deployed:
        configure(fake_url, replicas=point.replicas, service_ms=20)
        deployed.append(point.replicas)
        return Deployed(fake_url, {"Encoder": point.replicas})

    sc = scenario(users=[8], think_time_s=(0, 0), duration_s=1.5, warmup_s=0.3, slo_p99_ms=1000)
    points = [SweepPoint(n, n, f"replicas={n}") for n in (1, 2)]
    results, error = asyncio.run(
        run_sweep(points, deploy, sc, traffic, out_dir=tmp_path, log=lambda _: None)
    )
    assert error is None and deployed == [1, 2]
    report = build_report(
        results, scenario=sc, axis="replicas", gpu_standin=True, gpu_hour_usd=2.0, target_rps=60
    )
    paths = write_report(report, tmp_path)
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / name).stat().st_size > 200
    for name in ("throughput_vs_gpus", "latency_vs_load", "stage_breakdown"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for slug in ("replicas-1", "replicas-2"):
        for kind in ("stats", "stats_history", "failures", "exceptions"):
            assert (tmp_path / f"{slug}_{kind}.csv").exists()
    saved = json.loads((tmp_path / "report.json").read_text())
    one, two = saved["points"]
    # Throughput itself depends on how busy the host is; the stats tests check the math.
    assert one["throughput_rps"] > 0 and two["throughput_rps"] > 0
    assert saved["scaling_efficiency"] == pytest.approx(
        two["throughput_rps"] / (2 * one["throughput_rps"]), rel=0.01
    )
    assert saved["min_gpus_for_target"] == (2 if two["throughput_rps"] >= 60 else None)
    assert one["replicas_seen"] == {"Encoder": 1}
    assert set(one["stage_ms"]) >= {"encode", "retrieve", "total"}
    assert "throughput_vs_gpus.png" in (tmp_path / "report.html").read_text()


def test_cli_measures_a_running_service(fake_url, tmp_path: Path):
    configure(fake_url, replicas=64, service_ms=2)
    out = tmp_path / "out"
    code = llmrec(
        [
            "loadtest",
            "--url",
            fake_url,
            "--duration",
            "1",
            "--warmup",
            "0",
            "--users",
            "2",
            "--data",
            str(tmp_path / "none"),
            "--out",
            str(out),
            "--no-progress",
            "--dashboard",
            "http://127.0.0.1:9",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["points"][0]["throughput_rps"] > 10
    rows = list(csv.DictReader((out / "replicas-1_stats.csv").open()))
    assert rows[-1]["Name"] == "Aggregated" and int(rows[-1]["Request Count"]) > 10


def test_cli_refuses_a_remote_url(tmp_path: Path):
    assert llmrec(["loadtest", "--url", "http://192.0.2.1:8000", "--no-progress"]) == 2


# -- the aiohttp transport under httpx -----------------------------------------------------


async def _both_clients(url: str, method: str, path: str, **kw) -> list[httpx.Response]:
    answers = []
    for transport in (AiohttpTransport(4), None):
        async with httpx.AsyncClient(base_url=url, transport=transport, trust_env=False) as c:
            answers.append(await c.request(method, path, **kw))
    return answers


def test_aiohttp_transport_answers_as_httpx_does(fake_url):
    configure(fake_url, replicas=4, service_ms=2)
    for method, path, kw in [
        ("POST", "/v1/recommend", {"json": {"user_id": "u1", "k": 3}}),
        ("POST", "/v1/recommend", {"json": {}}),  # 422 with an error body
        ("POST", "/v1/recommend", {"content": b"{not json"}),
        ("GET", "/v1/nothing", {}),
    ]:
        aio, own = asyncio.run(_both_clients(fake_url, method, path, **kw))
        assert aio.status_code == own.status_code, path
        assert aio.headers["content-type"] == own.headers["content-type"]
        body, expected = aio.json(), own.json()
        if "request_id" in expected:  # fresh per answer; timings vary
            assert [i["item_id"] for i in body["items"]] == ["1", "2", "3"]
        else:
            assert body == expected
    assert server_stats(fake_url)["requests"]["/v1/recommend"] == 6


def test_aiohttp_transport_raises_httpx_errors(fake_url):
    async def get(url: str, timeout: float) -> None:
        async with httpx.AsyncClient(transport=AiohttpTransport(2), timeout=timeout) as c:
            await c.post(f"{url}/v1/recommend", json={"user_id": "u"})

    with pytest.raises(httpx.ConnectError):
        asyncio.run(get(f"http://127.0.0.1:{free_port()}", 5))
    configure(fake_url, replicas=1, service_ms=2000)
    try:
        with pytest.raises(httpx.ReadTimeout):
            asyncio.run(get(fake_url, 0.2))
    finally:
        configure(fake_url, replicas=4, service_ms=2)


def test_the_scenario_picks_the_generators_client(traffic):
    sc = scenario(mode="open", rates_rps=[10], duration_s=1)
    aio = LoadRunner("http://127.0.0.1:9", sc, traffic)._default_transport(8)
    assert isinstance(aio, AiohttpTransport) and aio.limit == 8
    own = LoadRunner("http://127.0.0.1:9", sc.with_overrides(client="httpx"), traffic)
    assert own._default_transport(8) is None


def test_the_pipeline_bench_measures_every_kind_against_the_floor(fake_url, traffic):
    from cluster.bench.pipeline import KINDS, run_pipeline_bench

    configure(fake_url, replicas=8, service_ms=20)
    rows = asyncio.run(
        run_pipeline_bench(fake_url, traffic, concurrencies=[1, 4], duration_s=1.0, warmup_s=0.2)
    )
    assert [(r["concurrency"], r["kind"]) for r in rows] == [(c, k) for c in (1, 4) for k in KINDS]
    for r in rows:
        assert r["errors"] == 0 and r["requests"] > 0
        if r["kind"] == "floor":  # no service time: the fastest row, and its own reference
            assert r["share_of_floor"] == 1.0 and r["stages_ms"] == {}
        else:  # 20 ms of simulated service: well under the floor's rate, stages reported
            assert r["share_of_floor"] < 0.8 and r["p50_above_floor_ms"] > 10
            assert set(r["stages_ms"]) == {"encode", "retrieve", "total"}
    # Four clients of eight slots: about four times the rate of one client.
    one, four = (
        next(r for r in rows if r["kind"] == "user" and r["concurrency"] == c) for c in (1, 4)
    )
    assert four["throughput_rps"] > 2.5 * one["throughput_rps"]
    assert server_stats(fake_url)["requests"]["/v1/recommend"] >= sum(
        r["requests"] for r in rows if r["kind"] != "floor"
    )
    assert all("cpu_ms_per_request" not in r for r in rows)  # not asked for


def test_the_pipeline_bench_reports_cpu_per_request_by_part(fake_url, traffic):
    from cluster.bench.pipeline import cpu_table, run_pipeline_bench

    configure(fake_url, replicas=8, service_ms=2)
    rows = asyncio.run(
        run_pipeline_bench(
            fake_url,
            traffic,
            concurrencies=[2],
            kinds=("user",),
            duration_s=1.0,
            warmup_s=0.2,
            cpu=True,
        )
    )
    for r in rows:
        cpu = r["cpu_ms_per_request"]
        # This process sent every request; the fake server (its own process) answered them.
        assert cpu["load generator"] > 0 and cpu["other"] > 0
        # No more than the machine's cores could have spent per request in the window.
        assert sum(cpu.values()) < 1000 * (os.cpu_count() or 2) / r["throughput_rps"] * 1.5
    assert cpu_table(rows).row_count == len(rows)


def test_the_pipeline_bench_repeats_rounds_against_each_rounds_own_floor(fake_url, traffic):
    from cluster.bench.pipeline import run_pipeline_bench, share_summary, summary_table

    configure(fake_url, replicas=8, service_ms=20)
    rows = asyncio.run(
        run_pipeline_bench(
            fake_url,
            traffic,
            concurrencies=[2],
            kinds=("user",),
            duration_s=0.6,
            warmup_s=0.1,
            rounds=3,
        )
    )
    assert [(r["round"], r["kind"]) for r in rows] == [
        (n, k) for n in (1, 2, 3) for k in ("floor", "user")
    ]
    for floor, user in zip(rows[::2], rows[1::2], strict=True):
        assert user["share_of_floor"] == round(user["throughput_rps"] / floor["throughput_rps"], 3)
    (summary,) = share_summary(rows)
    shares = sorted(r["share_of_floor"] for r in rows if r["kind"] == "user")
    assert (summary["kind"], summary["concurrency"], summary["rounds"]) == ("user", 2, 3)
    assert (summary["share_min"], summary["share_median"], summary["share_max"]) == tuple(shares)
    assert summary_table([summary]).row_count == 1
