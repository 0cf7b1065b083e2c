"""A capacity model: from the one-replica point of a sweep, the throughput of N replicas.

The model is fitted on the sweep's smallest point (one replica per scaled pool) and
uses what it measured at each of its load steps:

- the cores each role kept busy at each step up to the one of highest throughput (steps
  past it are overloaded): `cpu_cores`, by `cluster/cpu_probe.py` (every deployment, the
  proxy, Ray's own processes, the load generator, and the whole host). Divided by the
  replicas, that is a curve of the cores one replica keeps busy against the rate it sees,
  read linearly between the steps (below the first step at its demand per request, past
  the last along its slope). Its demand per request `D_k(r) = cores_k(r) / r` falls as the
  rate grows when a role batches (bigger batches, fewer idle wake-ups);
- where no CPU was sampled (a cluster of other machines, or a GPU stage whose work is not
  CPU time), the stage times of the answers (`timings_ms`) stand in for the demands;
- the mean latency of its lightest step (`R0`, a request that hardly queues).

A point with `n` replicas of the scaled pools (`Layout.scaled`: the encoder, and the
reranker when it runs) serves `X`, and each replica of role `k` sees `X / replicas_k(n)`.
No resource can be busier than it can be (operational laws: utilisation = throughput x
demand), which bounds `X`:

- each role: `X <= replicas_k(n) * cores_per_replica_k / D_k(X / replicas_k(n))` (a Python
  replica works on about one core; an encoder replica on its `torch_threads`);
- the host: `X <= U * host_cores / D_host`, where `D_host` is the sum of every role's
  demand plus the host's unattributed CPU per request, and `U` the share of the host that
  load can keep busy (`Layout.host_ceiling`, or the base point's peak share if higher);
- the closed loop: `X <= users / (think + R0)`.

The prediction is the highest `X` that meets every bound, each evaluated at `X` (a scan
down from the loop's bound), and the bottleneck is the bound it meets. The base point's
steps are the only data: the base itself is predicted by construction, and a point whose
replicas see rates far outside the steps' is extrapolated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

__all__ = ["Layout", "predict", "prediction_table"]

HOST = "host"
OTHER = "other"
"""The host's busy CPU no sampled role accounts for (the kernel, other processes)."""
LOOP = "closed loop"
UNBOUNDED = ("loadgen", "ray", OTHER)
"""Roles that load the host but bound nothing of their own."""
STAGE_ROLES = {"encode": "Encoder", "retrieve": "ShardRetriever", "rerank": "Reranker"}
"""Which role's demand a `timings_ms` stage stands for when no CPU was sampled."""


@dataclass(frozen=True)
class Layout:
    """How the deployments grow with a sweep point: JSON-ready, written by the CLI."""

    scaled: tuple[str, ...] = ("Encoder",)
    """Roles with one replica per point replica (`replicas=n` gives them n each)."""
    fixed: dict[str, int] = field(default_factory=dict)
    """Replicas of every other role (the router, the retriever replicas, the proxies); 1 when
    absent."""
    cores_per_replica: dict[str, float] = field(default_factory=dict)
    """Cores one replica can keep busy (1 when absent: one Python thread does the work)."""
    host_cores: float = 1.0
    """Cores of the machine every sampled process shares."""
    host_ceiling: float = 0.9
    """The share of the host's cores that load can keep busy (0.89-0.92 at the peak of
    2-core sweeps here); the base point's own share where it was higher."""

    def replicas(self, role: str, n: int) -> int:
        return n if role in self.scaled else self.fixed.get(role, 1)


def _peak(point: dict[str, Any]) -> dict[str, Any]:
    return max(point["steps"], key=lambda s: s["throughput_rps"])


@dataclass(frozen=True)
class _Curve:
    """Cores one replica keeps busy against the rate it sees (requests/s), through the base
    point's steps: linear between them, proportional to the rate below the first (its
    demand per request), along the last segment's slope past the last."""

    rates: tuple[float, ...]
    cores: tuple[float, ...]

    def __call__(self, rate: float) -> float:
        rates, cores = self.rates, self.cores
        if rate <= rates[0] or len(rates) == 1:
            return cores[0] * rate / rates[0]
        if rate <= rates[-1]:
            return float(np.interp(rate, rates, cores))
        slope = (cores[-1] - cores[-2]) / (rates[-1] - rates[-2])
        return cores[-1] + max(slope, 0.0) * (rate - rates[-1])

    def demand(self, rate: float) -> float:
        """Seconds of work per request at `rate`."""
        return self(rate) / rate if rate > 0 else self.cores[0] / self.rates[0]


def _curves(base: dict[str, Any], layout: Layout) -> tuple[dict[str, _Curve], str]:
    """Each role's demand curve from the base point's steps, and the demands' source."""
    peak = _peak(base)
    # Steps past the peak are overloaded (more users, less served): not the curve's data.
    steps = sorted(
        (s for s in base["steps"] if s["throughput_rps"] > 0 and s["load"] <= peak["load"]),
        key=lambda s: s["throughput_rps"],
    )
    sampled = all(s.get("cpu_cores") for s in steps)
    points: dict[str, list[tuple[float, float]]] = {}
    for s in steps:
        rps = s["throughput_rps"]
        if sampled:
            busy = dict(s["cpu_cores"])
            host = busy.pop(HOST, 0.0)
            busy[OTHER] = max(host - sum(busy.values()), 0.0)
        else:  # a stage's mean time per request stands for its work
            stages = s.get("stage_ms") or {}
            busy = {STAGE_ROLES[k]: ms / 1e3 * rps for k, ms in stages.items() if k in STAGE_ROLES}
        for role, cores in busy.items():
            replicas = layout.replicas(role, 1)
            points.setdefault(role, []).append((rps / replicas, cores / replicas))
    curves = {
        role: _Curve(tuple(r for r, _ in pts), tuple(c for _, c in pts))
        for role, pts in points.items()
    }
    return curves, "cpu" if sampled else "stage"


def _bounds(
    x: float,
    n: int,
    curves: dict[str, _Curve],
    layout: Layout,
    host_share: float | None,
    loop_rps: float | None,
) -> dict[str, float]:
    """Every bound on the throughput of `n` replicas, with the demands at throughput `x`."""
    bounds: dict[str, float] = {}
    host_demand = 0.0
    for role, curve in curves.items():
        replicas = layout.replicas(role, n)
        demand = curve.demand(x / replicas)
        host_demand += demand
        if role not in UNBOUNDED and demand > 0:
            bounds[role] = replicas * layout.cores_per_replica.get(role, 1.0) / demand
    if host_share is not None and host_demand > 0:
        bounds[HOST] = host_share * layout.host_cores / host_demand
    if loop_rps is not None:
        bounds[LOOP] = loop_rps
    return bounds


def _solve(bound_at: Callable[[float], dict[str, float]], high: float) -> float:
    """The highest throughput up to `high` that meets every bound evaluated at it.

    Demands fall as the rate grows (batching), so the feasible rates need not be one
    interval: scan down from `high` in 0.1% steps, then refine the first feasible one."""
    grid = np.linspace(high, 0.0, 1001)
    feasible = [x for x in grid if x <= min(bound_at(float(x)).values())]
    if not feasible:
        return 0.0
    low, top = float(feasible[0]), float(min(feasible[0] + high / 1000, high))
    for _ in range(30):  # bisect between the feasible grid point and the one above it
        mid = (low + top) / 2
        low, top = (mid, top) if mid <= min(bound_at(mid).values()) else (low, mid)
    return low


def predict(points: list[dict[str, Any]], layout: Layout, think_s: float = 0.0) -> dict[str, Any]:
    """Predicted throughput and bottleneck of every point from its smallest one.

    `points`: the report's points (`loadtest.report`), each with `replicas` and `steps`
    (their `throughput_rps`, `mean_ms`, `load`, `stage_ms`, `cpu_cores`); `think_s`: the
    users' mean think time. Returns the model's inputs and, per point, measured (peak
    step) against predicted throughput.
    """
    measured = [p for p in points if p["steps"] and _peak(p)["throughput_rps"] > 0]
    if not measured:
        return {"error": "no point served requests"}
    base = min(measured, key=lambda p: p["replicas"])
    curves, source = _curves(base, layout)
    host_share = None
    if source == "cpu":
        seen = _peak(base)["cpu_cores"][HOST] / layout.host_cores
        host_share = min(max(seen, layout.host_ceiling), 1.0)
    r0_s = min(base["steps"], key=lambda s: s["load"])["mean_ms"] / 1e3
    rows = []
    for point in measured:
        peak = _peak(point)
        n, users = point["replicas"], float(peak["load"])
        loop = users / (think_s + r0_s) if think_s + r0_s > 0 else None
        bound_at = partial(
            _bounds, n=n, curves=curves, layout=layout, host_share=host_share, loop_rps=loop
        )
        high = loop or 10 * max(p["throughput_rps"] for p in base["steps"]) * n
        predicted = _solve(bound_at, high)
        bounds = bound_at(predicted)
        rps = peak["throughput_rps"]
        rows.append(
            {
                "label": point["label"],
                "replicas": n,
                "measured_rps": round(rps, 2),
                "predicted_rps": round(predicted, 2),
                "error": round(predicted / rps - 1.0, 4) if rps > 0 else None,
                "bottleneck": min(bounds, key=bounds.__getitem__) if bounds else "unknown",
                "bounds_rps": {k: round(v, 1) for k, v in sorted(bounds.items())},
            }
        )
    peak = _peak(base)
    return {
        "base": base["label"],
        "demand_source": source,
        "demand_ms": {  # at the base point's peak step
            role: round(curve.demand(peak["throughput_rps"] / layout.replicas(role, 1)) * 1e3, 3)
            for role, curve in sorted(curves.items())
        },
        "host_share": None if host_share is None else round(host_share, 4),
        "layout": {
            "scaled": list(layout.scaled),
            "fixed": layout.fixed,
            "cores_per_replica": layout.cores_per_replica,
            "host_cores": layout.host_cores,
            "host_ceiling": layout.host_ceiling,
        },
        "points": rows,
    }


def prediction_table(capacity: dict[str, Any]) -> list[str]:
    """Markdown lines: predicted beside measured for every point, and the bottleneck."""
    if "points" not in capacity:
        return [f"Capacity model: {capacity.get('error', 'not computed')}."]
    demand = ", ".join(f"{k} {v:g} ms" for k, v in capacity["demand_ms"].items())
    share = capacity.get("host_share")
    host = f"; the host at most {share:.0%} busy" if share is not None else ""
    lines = [
        f"Fitted on {capacity['base']} ({capacity['demand_source']} demand per request at its "
        f"peak: {demand}{host}).",
        "",
        "| point | measured rps | predicted rps | error | bottleneck |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in capacity["points"]:
        error = "–" if r["error"] is None else f"{r['error']:+.1%}"
        lines.append(
            f"| {r['label']} | {r['measured_rps']:.1f} | {r['predicted_rps']:.1f} | {error} "
            f"| {r['bottleneck']} |"
        )
    return lines
