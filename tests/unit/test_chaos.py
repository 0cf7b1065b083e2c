"""Chaos runs: kills on schedule, retries, recovery times, lost writes, the report; the killer.

The service here is an httpx mock whose "replica" the test's killer takes
down for a while; `tests/integration/test_serve_app.py` kills a real Serve
replica with `ReplicaKiller`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cluster.faults import ReplicaKiller
from loadtest.chaos import ChaosPlan, ChaosRun, chaos_report, run_chaos, write_chaos_report
from loadtest.scenario import Scenario, TaskSpec
from loadtest.traffic import TrafficData


class FlakyService:
    """Answers like llmrec; for `down_s` after a kill every request fails with 502 once
    (a retry gets through), and one acknowledged upsert is never stored."""

    def __init__(self, down_s: float = 0.3) -> None:
        self.down_s = down_s
        self.killed_at = -1e9
        self.items: dict[str, dict] = {}
        self.events: set[tuple[str, str, str]] = set()
        self.dropped: str | None = None
        self.failed_once: set[bytes] = set()

    def kill(self, target: str) -> str:
        self.killed_at = time.monotonic()
        return f"{target} (pid 1)"

    def _down(self) -> bool:
        return time.monotonic() - self.killed_at < self.down_s

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/health":
            return httpx.Response(503 if self._down() else 200, json={})
        if request.method == "GET" and path.startswith("/v1/items/"):
            item_id = path.rsplit("/", 1)[1]
            found = item_id in self.items
            return httpx.Response(200 if found else 404, json=self.items.get(item_id, {}))
        if self._down() and request.content not in self.failed_once:
            self.failed_once.add(request.content)
            return httpx.Response(502, json={"error": {"type": "backend_failed"}})
        body = json.loads(request.content)
        if path == "/v1/items":
            item = body["items"][0]
            if self.dropped is None:
                self.dropped = item["item_id"]  # acknowledged, never stored: a lost write
            else:
                self.items[item["item_id"]] = item
            return httpx.Response(200, json={"upserted": [item["item_id"]]})
        if path == "/v1/feedback":
            self.events.add((body["user_id"], body["item_id"], str(body["ts"])))
            return httpx.Response(200, json={"recorded": body})
        degraded = ["shard-1"] if self._down() else []
        return httpx.Response(
            200, json={"items": [], "degraded": degraded, "timings_ms": {"total": 1.0}}
        )


def chaos_scenario() -> Scenario:
    return Scenario(
        users=[2],
        think_time_s=(0.01, 0.02),
        tasks=[
            TaskSpec(kind="user", weight=3),
            TaskSpec(kind="feedback", weight=1),
            TaskSpec(kind="upsert", weight=1),
        ],
    )


def chaos_against(service: FlakyService, plan: ChaosPlan, **kwargs) -> ChaosRun:
    """`run_chaos` of `chaos_scenario` against `service`, which `service.kill` strikes."""
    return asyncio.run(
        run_chaos(
            "http://127.0.0.1:9",
            chaos_scenario(),
            TrafficData.synthetic(n_users=20, n_items=50),
            plan,
            service.kill,
            transport=httpx.MockTransport(service),
            **kwargs,
        )
    )


def test_a_chaos_run_kills_on_schedule_and_finds_what_was_lost(tmp_path: Path):
    service = FlakyService()
    plan = ChaosPlan(
        duration_s=3.0, steady_s=0.8, kill_every_s=1.0, targets=("A", "B"), health_poll_s=0.1
    )
    run = chaos_against(service, plan, feedback_recorded=lambda: service.events)
    report = chaos_report(run)

    assert [k.at_s for k in run.kills] == pytest.approx([0.8, 1.8, 2.8], abs=0.15)
    assert sorted(k.target for k in run.kills[:2]) == ["A", "B"]  # each target once per round
    assert all(k.recovered_s is not None and 0.25 <= k.recovered_s <= 0.6 for k in run.kills)
    assert report["success_no_retry"] < 1.0 and report["success_one_retry"] == 1.0
    assert report["errors"] == {"HTTP 502": report["errors"]["HTTP 502"]}
    assert 0 < report["degraded_share"] < 1
    assert report["writes_acknowledged"] > 2 and report["writes_unchecked"] == 0
    assert report["writes_lost_detail"] == [f"item {service.dropped} (GET answered 404)"]

    paths = write_chaos_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["writes_lost"] == 1
    assert "| acknowledged writes lost | 1 |" in paths["markdown"].read_text()
    assert paths["plot"].stat().st_size > 10_000


def test_feedback_without_a_reader_is_counted_unchecked():
    service = FlakyService()
    run = chaos_against(service, ChaosPlan(duration_s=0.5, steady_s=10.0, targets=("A",)))
    feedback = sum(r.write[0] == "feedback" for r in run.result.records if r.write)
    assert run.kills == [] and feedback > 0 and run.writes_unchecked == feedback


def test_the_killer_sigkills_a_replica_process_of_its_app_and_deployment():
    def replica(title: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", f"exec -a '{title}' sleep 60"])

    target = replica("ray::ServeReplica:chaostest:ShardRetriever-2")
    other_app = replica("ray::ServeReplica:elsewhere:ShardRetriever-0")
    time.sleep(0.3)
    try:
        said = ReplicaKiller(app="chaostest")("ShardRetriever")
        assert target.wait(timeout=5) == -signal.SIGKILL
        assert f"pid {target.pid}" in said and "ShardRetriever-2" in said
        assert other_app.poll() is None
        with pytest.raises(LookupError, match="no Encoder process"):
            ReplicaKiller(app="chaostest")("Encoder")
    finally:
        for proc in (target, other_app):
            proc.kill()
            proc.wait()
