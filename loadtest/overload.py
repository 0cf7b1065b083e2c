"""The overload check: measure capacity, then offer about twice as much, open loop.

`run_overload(url, scenario, traffic)` first runs the scenario's tasks closed
loop (`max(scenario.users)` users, no think time) for `capacity_s` seconds
and takes its throughput as the capacity; then it sends Poisson arrivals at
`factor` times that for `step_s` seconds, whatever the service's latency.
A service that sheds load well answers what it accepts within the deadline
and refuses the rest at once (503 or 429 with `Retry-After`) rather than
letting requests queue until they are useless. `overload_report` says how
it went: the shares accepted, refused (with and without `Retry-After`),
failed otherwise and never answered; p50/p99 of accepted requests against
their deadline, how fast refusals came back, and the generator's own send lag
and CPU (near a whole core, the latencies are partly the generator's).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from loadtest.errors import LoadtestError
from loadtest.runner import LoadRunner, RunResult
from loadtest.scenario import Scenario
from loadtest.stats import RequestRecord, latency_percentile
from loadtest.traffic import TrafficData

__all__ = ["OverloadRun", "overload_report", "run_overload"]

_REFUSED = (429, 503)


@dataclass(frozen=True)
class OverloadRun:
    capacity_rps: float
    offered_rps: float
    deadline_ms: float
    result: RunResult


async def run_overload(
    url: str,
    scenario: Scenario,
    traffic: TrafficData,
    *,
    factor: float = 2.0,
    capacity_s: float = 20.0,
    step_s: float = 30.0,
    capacity_rps: float | None = None,
    allow_hosts: tuple[str, ...] = (),
    transport: httpx.AsyncBaseTransport | None = None,
    headers: Mapping[str, str] | None = None,
) -> OverloadRun:
    """Capacity (measured unless `capacity_rps` is given), then `factor` times it, open loop.

    The deadline compared against is the tasks' `deadline_ms` (they must all name the same
    one); `LoadtestError` when they do not. `headers` go on every request.
    """
    deadlines = {t.deadline_ms for t in scenario.tasks if t.weight > 0 and t.kind != "feedback"}
    if len(deadlines) != 1 or None in deadlines:
        raise LoadtestError("overload: give every recommend task the same deadline_ms")
    if capacity_rps is None:
        closed = scenario.with_overrides(
            mode="closed",
            users=[max(scenario.users)],
            think_time_s=(0.0, 0.0),
            duration_s=capacity_s,
        )
        measured = await LoadRunner(
            url, closed, traffic, allow_hosts=allow_hosts, transport=transport, headers=headers
        ).run()
        capacity_rps = measured.total_summary().throughput_rps
    offered = max(capacity_rps * factor, 0.1)
    open_loop = scenario.with_overrides(
        mode="open", rates_rps=[offered], duration_s=step_s, warmup_s=0.0
    )
    result = await LoadRunner(
        url, open_loop, traffic, allow_hosts=allow_hosts, transport=transport, headers=headers
    ).run()
    return OverloadRun(capacity_rps, offered, float(deadlines.pop()), result)


def overload_report(run: OverloadRun) -> dict[str, Any]:
    """The shares and latencies of the open-loop step (module docstring), JSON-ready."""
    records = run.result.measured
    accepted = [r for r in records if r.outcome == "ok"]
    refused = [r for r in records if r.status in _REFUSED]
    unanswered = [r for r in records if r.status == 0]
    other = [r for r in records if r.outcome == "error" and r.status not in (0, *_REFUSED)]
    p99 = latency_percentile(accepted, 99)
    n = max(len(records), 1)
    return {
        "capacity_rps": round(run.capacity_rps, 2),
        "offered_rps": round(run.offered_rps, 2),
        "requests": len(records),
        "accepted_share": round(len(accepted) / n, 4),
        "refused_share": round(len(refused) / n, 4),
        "refused_with_retry_after": sum(r.retry_after for r in refused),
        "refused_without_retry_after": sum(not r.retry_after for r in refused),
        "other_errors": _by_status(other),
        "unanswered": len(unanswered),
        "degraded_share_of_accepted": round(
            sum(bool(r.degraded) for r in accepted) / max(len(accepted), 1), 4
        ),
        "accepted_p50_ms": round(latency_percentile(accepted, 50), 1),
        "accepted_p99_ms": round(p99, 1),
        "deadline_ms": run.deadline_ms,
        "accepted_p99_within_deadline": p99 <= run.deadline_ms,
        "refused_p99_ms": round(latency_percentile(refused, 99), 1),
        "max_latency_ms": round(max((r.latency_ms for r in records), default=0.0), 1),
        "generator_max_lag_ms": round(run.result.max_lag_ms, 1),
        "generator_client": run.result.scenario.client,
        "generator_cpu_percent": round(run.result.client_cpu_percent, 1),
    }


def _by_status(records: list[RequestRecord]) -> dict[str, int]:
    return dict(sorted(Counter(str(r.status) for r in records).items()))
