"""Sweeps: measure the same scenario at several GPU or replica counts.

`run_sweep` walks the points in order: `deploy(point)` (supplied by the
caller; the CLI redeploys the Serve app, tests pass a fake) returns where the
service answers, then the sweep waits for `/v1/health`, runs the scenario
(its warm-up first), writes the point's Locust CSV files and moves on. It
knows nothing about Serve configs: the load tester reaches the cluster only
over HTTP.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loadtest.errors import LoadtestError
from loadtest.locust_csv import write_locust_csv
from loadtest.runner import LoadRunner, ProgressHook, RunResult
from loadtest.scenario import Scenario
from loadtest.stats import Summary
from loadtest.traffic import TrafficData

__all__ = [
    "AXES",
    "Deployed",
    "PointResult",
    "SweepPoint",
    "parse_sweep",
    "run_sweep",
    "wait_for_health",
]

AXES = ("gpus", "replicas")
MAX_POINTS = 16


@dataclass(frozen=True)
class SweepPoint:
    """One configuration to measure: replicas per scaled pool and GPUs it uses (or stands for)."""

    replicas: int
    gpus: float
    label: str

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label).strip("-") or "point"


@dataclass(frozen=True)
class Deployed:
    """Where a deployed point answers, and what the deployer saw of it."""

    url: str
    replicas_seen: dict[str, int] | None = None
    deploy_s: float = 0.0


Deploy = Callable[[SweepPoint], Deployed]


@dataclass
class PointResult:
    """A measured point: its run, per-step and whole-run summaries, CSV files."""

    point: SweepPoint
    deployed: Deployed
    run: RunResult
    steps: list[Summary]
    total: Summary
    csv_files: list[Path] = field(default_factory=list)


def parse_sweep(spec: str) -> tuple[str, list[int]]:
    """`"gpus=1,2,4"` → `("gpus", [1, 2, 4])`; raises LoadtestError on anything else."""
    axis, sep, values = spec.partition("=")
    axis = axis.strip()
    if not sep or axis not in AXES:
        raise LoadtestError(f"--sweep {spec!r}: write gpus=1,2,4 or replicas=1,2,4")
    try:
        counts = [int(v) for v in values.split(",") if v.strip()]
    except ValueError as exc:
        raise LoadtestError(f"--sweep {spec!r}: counts must be whole numbers") from exc
    if not counts or any(c < 1 or c > 64 for c in counts):
        raise LoadtestError(f"--sweep {spec!r}: give 1..{MAX_POINTS} counts between 1 and 64")
    counts = sorted(set(counts))
    if len(counts) > MAX_POINTS:
        raise LoadtestError(f"--sweep {spec!r}: at most {MAX_POINTS} points")
    return axis, counts


def wait_for_health(
    url: str,
    *,
    timeout_s: float = 600.0,
    poll_s: float = 1.0,
    on_wait: Callable[[str], None] | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Block until `GET {url}/v1/health` answers 200; raises LoadtestError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/v1/health", headers=headers, timeout=30.0, trust_env=False)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if on_wait:
            on_wait(last)
        time.sleep(poll_s)
    raise LoadtestError(f"{url}/v1/health not ready after {timeout_s:.0f}s ({last})")


async def run_sweep(
    points: list[SweepPoint],
    deploy: Deploy,
    scenario: Scenario,
    traffic: TrafficData,
    *,
    out_dir: Path,
    allow_hosts: tuple[str, ...] | list[str] = (),
    progress: ProgressHook | None = None,
    health_timeout_s: float = 600.0,
    log: Callable[[str], None] = print,
    headers: Mapping[str, str] | None = None,
    cpu_probe: Callable[[], dict[str, float]] | None = None,
) -> tuple[list[PointResult], str | None]:
    """Deploy and measure every point in order; `headers` go on every request; `cpu_probe`
    (cumulative CPU seconds by role, `LoadRunner`) is sampled while each point runs.

    Returns the measured points and, when a deploy or health wait failed, the
    error that stopped the sweep (points measured before it are kept).
    """
    results: list[PointResult] = []
    for point in points:
        try:
            t = time.perf_counter()
            deployed = await asyncio.to_thread(deploy, point)
            await asyncio.to_thread(
                wait_for_health, deployed.url, timeout_s=health_timeout_s, headers=headers
            )
            if not deployed.deploy_s:
                deployed = Deployed(deployed.url, deployed.replicas_seen, time.perf_counter() - t)
        except LoadtestError as exc:
            return results, f"{point.label}: {exc}"
        seen = deployed.replicas_seen or "not reported"
        log(f"{point.label}: ready after {deployed.deploy_s:.0f}s; replicas {seen}")
        runner = LoadRunner(
            deployed.url,
            scenario,
            traffic,
            allow_hosts=allow_hosts,
            progress=progress,
            label=point.label,
            headers=headers,
            cpu_probe=cpu_probe,
        )
        run = await runner.run()
        steps = run.step_summaries()
        csv_files = write_locust_csv(Path(out_dir) / point.slug, run)
        results.append(PointResult(point, deployed, run, steps, run.total_summary(), csv_files))
    return results, None
