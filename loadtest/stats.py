"""Request records and the numbers made from them: percentiles, throughput, goodput.

Definitions used in every report:

- latency percentiles: nearest rank over every answered request (success or
  HTTP error; a client timeout counts at the time it gave up). p-th percentile
  of n sorted values is the value at rank ceil(p/100 * n) (`percentile`, the
  one definition, from `retrieval.metrics`: pure arithmetic, shared with the
  benchmarks and `llmrec eval`).
- throughput: successful (2xx) answers that arrived in the window, per second
  (the run's last window lasts until its last answer, so answers that queued
  behind an overloaded service are not credited to a shorter time).
- goodput: those successful answers that were not degraded and took at most
  the SLO latency, per second. A degraded answer skipped work the request
  asked for.
- offered load, latencies and error counts: the requests *sent* in the window.
- error rate: (HTTP errors + transport errors + dropped arrivals) / all of
  those plus successes. Feedback answered 404/405 counts as "unsupported",
  neither success nor error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from retrieval.metrics import percentile

__all__ = [
    "Outcome",
    "RequestRecord",
    "Summary",
    "latency_percentile",
    "percentile",
    "recent_window",
    "summarize",
]

Outcome = Literal["ok", "error", "unsupported", "dropped"]


@dataclass(frozen=True)
class RequestRecord:
    """One request: when it started (s since the run began), how long it took, what came back."""

    name: str
    method: str
    start_s: float
    latency_ms: float
    status: int
    """HTTP status; 0 when no answer came (transport error, timeout, dropped)."""
    outcome: Outcome
    step: int
    """Load step index; -1 during the warm-up."""
    degraded: tuple[str, ...] = ()
    timings: dict[str, float] | None = None
    size: int = 0
    error: str | None = None
    """Why it failed: "HTTP 503", an exception name, or "dropped"."""
    write: tuple[str, ...] = ()
    """What the service acknowledged (`PlannedRequest.write`), on a 2xx write."""
    retry_ok: bool | None = None
    """With `retry_failed`: whether the one retry of a failed request succeeded."""
    retry_after: bool = False
    """Whether the answer carried a `Retry-After` header (every 429/503 of llmrec does)."""

    @property
    def end_s(self) -> float:
        return self.start_s + self.latency_ms / 1000.0

    @property
    def answered(self) -> bool:
        return self.outcome in ("ok", "error")


@dataclass
class Summary:
    """Numbers of one window of records (a load step, or a whole run)."""

    duration_s: float
    sent: int = 0
    ok: int = 0
    errors: int = 0
    dropped: int = 0
    unsupported: int = 0
    degraded: int = 0
    within_slo: int = 0
    offered_rps: float = 0.0
    throughput_rps: float = 0.0
    goodput_rps: float = 0.0
    error_rate: float = 0.0
    degraded_rate: float = 0.0
    min_ms: float = 0.0
    mean_ms: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    """Mean server-side time per stage (`timings_ms` of successful answers)."""

    def meets_slo(self, slo_ms: float, max_error_rate: float) -> bool:
        return self.ok > 0 and self.p99_ms <= slo_ms and self.error_rate <= max_error_rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_percentile(records: Iterable[RequestRecord], q: float) -> float:
    """Nearest-rank percentile `q` of the records' latencies (ms); 0.0 when there are none."""
    return percentile(sorted(r.latency_ms for r in records), q)


def _error_key(r: RequestRecord) -> str:
    if r.outcome == "dropped":
        return "dropped"
    return str(r.status) if r.status else (r.error or "transport")


def summarize(
    records: Iterable[RequestRecord],
    *,
    duration_s: float,
    slo_ms: float,
    completed: Iterable[RequestRecord] | None = None,
    completed_s: float | None = None,
) -> Summary:
    """Summary of a window of `duration_s` seconds with latency SLO `slo_ms`.

    `records` are the requests sent in the window; `completed` (default: the same)
    those answered in it, over `completed_s` seconds (default: `duration_s`), which
    give throughput and goodput.
    """
    if duration_s <= 0 or (completed_s is not None and completed_s <= 0):
        raise ValueError("durations must be positive")
    records = list(records)
    done = records if completed is None else list(completed)
    done_s = duration_s if completed_s is None else completed_s
    s = Summary(duration_s=duration_s, sent=len(records))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    stage_sum: Counter[str] = Counter()
    stage_n: Counter[str] = Counter()
    for r in records:
        if r.answered:
            latencies.append(r.latency_ms)
        if r.outcome == "ok":
            s.ok += 1
            s.degraded += bool(r.degraded)
            for stage, ms in (r.timings or {}).items():
                stage_sum[stage] += ms
                stage_n[stage] += 1
        elif r.outcome == "unsupported":
            s.unsupported += 1
        else:
            s.errors += r.outcome == "error"
            s.dropped += r.outcome == "dropped"
            errors[_error_key(r)] += 1
    latencies.sort()
    answered_ok = [r for r in done if r.outcome == "ok"]
    s.within_slo = sum(not r.degraded and r.latency_ms <= slo_ms for r in answered_ok)
    s.offered_rps = s.sent / duration_s
    s.throughput_rps = len(answered_ok) / done_s
    s.goodput_rps = s.within_slo / done_s
    failed = s.errors + s.dropped
    s.error_rate = failed / (s.ok + failed) if s.ok + failed else 0.0
    s.degraded_rate = s.degraded / s.ok if s.ok else 0.0
    if latencies:
        s.min_ms = latencies[0]
        s.mean_ms = sum(latencies) / len(latencies)
        s.p50_ms = percentile(latencies, 50)
        s.p90_ms = percentile(latencies, 90)
        s.p99_ms = percentile(latencies, 99)
        s.max_ms = latencies[-1]
    s.errors_by_status = dict(sorted(errors.items()))
    s.stage_ms = {k: stage_sum[k] / stage_n[k] for k in stage_sum}
    return s


def recent_window(
    records: Sequence[RequestRecord], now_s: float, window_s: float
) -> tuple[float, float, int]:
    """(answers/s, p99 ms, errors) of the records finished in the last `window_s` seconds.

    Walks back from the end, so it relies on `records` being in completion order.
    """
    since = now_s - window_s
    latencies: list[float] = []
    done = errors = 0
    for r in reversed(records):
        if r.end_s < since:
            break
        if r.answered:
            latencies.append(r.latency_ms)
        done += r.outcome != "unsupported"
        errors += r.outcome in ("error", "dropped")
    latencies.sort()
    return done / window_s, percentile(latencies, 99), errors
