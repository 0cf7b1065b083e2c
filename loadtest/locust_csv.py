"""Locust-compatible CSV files, so dashboards built for Locust read llmrec runs.

`write_locust_csv(prefix, result)` writes `{prefix}_stats.csv`,
`{prefix}_stats_history.csv`, `{prefix}_failures.csv` and
`{prefix}_exceptions.csv` with the columns Locust writes (default
percentiles). Times are milliseconds. In the history file `Requests/s`,
`Failures/s` and the percentile columns cover the last 10 seconds, the
`Total …` columns everything so far, one `Aggregated` row per second.
"""

from __future__ import annotations

import bisect
import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from loadtest.runner import RunResult
from loadtest.stats import RequestRecord, percentile

__all__ = [
    "HISTORY_COLUMNS",
    "PERCENTILES",
    "STATS_COLUMNS",
    "percentile_columns",
    "write_locust_csv",
]

PERCENTILES = (0.50, 0.66, 0.75, 0.80, 0.90, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0)
HISTORY_WINDOW_S = 10.0


def percentile_columns() -> list[str]:
    """Locust's names for its default percentiles: 50%, 66%, … 99.99%, 100%."""
    return [f"{p * 100:.10g}%" for p in PERCENTILES]


STATS_COLUMNS = [
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    *percentile_columns(),
]
HISTORY_COLUMNS = [
    "Timestamp",
    "User Count",
    "Type",
    "Name",
    "Requests/s",
    "Failures/s",
    *percentile_columns(),
    "Total Request Count",
    "Total Failure Count",
    "Total Median Response Time",
    "Total Average Response Time",
    "Total Min Response Time",
    "Total Max Response Time",
    "Total Average Content Size",
]


def _failed(r: RequestRecord) -> bool:
    return r.outcome in ("error", "dropped")


def _percentile_fields(latencies: Sequence[float]) -> list[int | str]:
    if not latencies:
        return ["N/A"] * len(PERCENTILES)
    return [int(percentile(latencies, p * 100)) for p in PERCENTILES]


def _stats_row(method: str, name: str, records: list[RequestRecord], duration_s: float) -> list:
    latencies = sorted(r.latency_ms for r in records if r.answered)
    n, failures = len(records), sum(_failed(r) for r in records)
    return [
        method,
        name,
        n,
        failures,
        int(percentile(latencies, 50)),
        sum(latencies) / len(latencies) if latencies else 0,
        int(latencies[0]) if latencies else 0,
        int(latencies[-1]) if latencies else 0,
        sum(r.size for r in records) / n if n else 0,
        n / duration_s,
        failures / duration_s,
        *_percentile_fields(latencies),
    ]


def _users_at(samples: list[tuple[float, int]], t: float) -> int:
    i = bisect.bisect_right([s for s, _ in samples], t)
    return samples[i - 1][1] if i else 0


def _history_rows(result: RunResult) -> list[list]:
    records = sorted(result.measured, key=lambda r: r.end_s)
    ends = [r.end_s for r in records]
    latencies = np.array([r.latency_ms if r.answered else np.nan for r in records], dtype=float)
    start, stop = result.measure_start_s, max(result.measure_end_s, ends[-1] if ends else 0.0)
    rows = []
    t = start + 1.0
    while True:
        t = min(t, stop)
        hi = bisect.bisect_right(ends, t)
        lo = bisect.bisect_right(ends, t - HISTORY_WINDOW_S)
        window = records[lo:hi]
        span = min(HISTORY_WINDOW_S, t - start)
        so_far = records[:hi]
        answered = latencies[:hi][~np.isnan(latencies[:hi])]
        failures = sum(_failed(r) for r in so_far)
        timestamp = int(result.wall_start + (t - start))
        if rows and rows[-1][0] == timestamp:
            rows.pop()  # the closing row falls in the same second as the one before
        rows.append(
            [
                timestamp,
                _users_at(result.active_samples, t),
                "",
                "Aggregated",
                f"{len(window) / span:.2f}",
                f"{sum(_failed(r) for r in window) / span:.2f}",
                *_percentile_fields(sorted(r.latency_ms for r in window if r.answered)),
                hi,
                failures,
                int(np.median(answered)) if answered.size else 0,
                float(answered.mean()) if answered.size else 0,
                int(answered.min()) if answered.size else 0,
                int(answered.max()) if answered.size else 0,
                sum(r.size for r in so_far) / hi if hi else 0,
            ]
        )
        if t >= stop:
            return rows
        t += 1.0


def write_locust_csv(prefix: Path | str, result: RunResult) -> list[Path]:
    """Write the four Locust CSV files of one run's measured part; returns their paths."""
    prefix = str(prefix)
    measured = result.measured
    duration = max(result.measure_end_s - result.measure_start_s, 1e-3)
    paths = [Path(f"{prefix}_{kind}.csv") for kind in ("stats", "stats_history", "failures")]
    paths.append(Path(f"{prefix}_exceptions.csv"))
    paths[0].parent.mkdir(parents=True, exist_ok=True)

    by_name: dict[tuple[str, str], list[RequestRecord]] = {}
    for r in measured:
        by_name.setdefault((r.method, r.name), []).append(r)
    with paths[0].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(STATS_COLUMNS)
        for (method, name), recs in sorted(by_name.items(), key=lambda kv: kv[0][1]):
            w.writerow(_stats_row(method, name, recs, duration))
        w.writerow(_stats_row("", "Aggregated", measured, duration))

    with paths[1].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HISTORY_COLUMNS)
        w.writerows(_history_rows(result))

    failures = Counter((r.method, r.name, r.error or "") for r in measured if _failed(r))
    with paths[2].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Method", "Name", "Error", "Occurrences"])
        for (method, name, error), n in sorted(failures.items()):
            w.writerow([method, name, error, n])

    exceptions = Counter(r.error for r in measured if r.outcome == "error" and r.status == 0)
    with paths[3].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Count", "Message", "Traceback", "Nodes"])
        for message, n in exceptions.most_common():
            w.writerow([n, message, "", "local"])
    return paths
