"""The overload check against stand-in services: one that sheds load, one that queues."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from loadtest.errors import LoadtestError
from loadtest.overload import overload_report, run_overload
from loadtest.scenario import Scenario, TaskSpec
from loadtest.traffic import TrafficData


def service(slots: int, service_s: float, shed: bool):
    """`slots` requests in service at once; beyond them 503 + Retry-After (`shed`) or a wait."""
    gate = asyncio.Semaphore(slots)
    busy = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal busy
        if shed and busy >= slots:
            await asyncio.sleep(0.002)  # a refusal costs the service a little too
            return httpx.Response(503, headers={"Retry-After": "1"}, json={"error": {}})
        busy += 1
        try:
            async with gate:
                await asyncio.sleep(service_s)
        finally:
            busy -= 1
        return httpx.Response(200, json={"items": [], "degraded": [], "timings_ms": {}})

    return httpx.MockTransport(handler)


def scenario(deadline_ms: int | None = 300) -> Scenario:
    return Scenario(
        users=[8],
        duration_s=1.5,
        warmup_s=0,
        max_in_flight=5000,
        tasks=[TaskSpec(kind="user", deadline_ms=deadline_ms)],
    )


def check(transport, deadline_ms: int = 300) -> dict:
    run = asyncio.run(
        run_overload(
            "http://127.0.0.1:9",
            scenario(deadline_ms),
            TrafficData.synthetic(n_users=20, n_items=50),
            capacity_s=1.0,
            step_s=1.5,
            transport=transport,
        )
    )
    return overload_report(run)


def test_a_service_that_sheds_load_keeps_its_accepted_requests_within_the_deadline():
    report = check(service(slots=4, service_s=0.02, shed=True))

    assert report["capacity_rps"] == pytest.approx(200, rel=0.4)  # 4 slots / 20 ms
    assert report["offered_rps"] == pytest.approx(2 * report["capacity_rps"], rel=0.01)
    assert 0.2 < report["refused_share"] < 0.9
    assert report["refused_without_retry_after"] == 0 and report["unanswered"] == 0
    assert report["accepted_p99_within_deadline"] and report["accepted_p99_ms"] < 300


def test_a_service_that_queues_misses_the_deadline_for_what_it_accepts():
    report = check(service(slots=4, service_s=0.02, shed=False))

    assert report["refused_share"] == 0
    assert not report["accepted_p99_within_deadline"]


def test_tasks_must_name_one_deadline():
    with pytest.raises(LoadtestError, match="deadline_ms"):
        asyncio.run(
            run_overload(
                "http://127.0.0.1:9",
                scenario(None),
                TrafficData.synthetic(n_users=5, n_items=5),
                capacity_rps=1.0,
            )
        )
