"""The sweep report: `report.json`, `report.md`, `report.html` and PNG plots in one folder.

Each point ran the scenario's load steps. Its headline figures come from one
step: the one with the highest throughput among the steps that met the SLO
(p99 ≤ SLO and error rate ≤ the scenario's `max_error_rate`), or, when none
did, the step with the highest goodput. From the headline figures:

- scaling efficiency of a point = (throughput / GPUs) ÷ (same for the smallest
  point); the report's `scaling_efficiency` is that of the largest point;
- cost per 1,000 requests = GPUs × `gpu_hour_usd` ÷ (3600 × throughput) × 1000;
- `min_gpus_for_target` = the fewest GPUs whose headline step met the SLO at
  a throughput of at least `target_rps`.

On machines without GPUs every replica stands in for one GPU (`gpu_standin`).

With a `capacity_layout` (the CLI gives one) the report has a `capacity` section: the
model of `loadtest/capacity.py` fitted on the smallest point, each point's predicted
throughput beside its measured one, and the bottleneck that bounds it.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from loadtest.capacity import Layout, predict, prediction_table
from loadtest.scenario import Scenario
from loadtest.stats import Summary
from loadtest.sweep import PointResult

__all__ = ["build_report", "headline_step", "write_report"]

FEW_ANSWERS = 100
STEP_FIELDS = (
    "offered_rps",
    "throughput_rps",
    "goodput_rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "error_rate",
    "degraded_rate",
)


def headline_step(steps: list[Summary], slo_ms: float, max_error_rate: float) -> tuple[int, bool]:
    """(index of the headline step, whether it met the SLO); see the module docstring."""
    if not steps:
        raise ValueError("a point needs at least one measured step")
    meeting = [i for i, s in enumerate(steps) if s.meets_slo(slo_ms, max_error_rate)]
    if meeting:
        return max(meeting, key=lambda i: (steps[i].throughput_rps, -i)), True
    return max(range(len(steps)), key=lambda i: (steps[i].goodput_rps, -i)), False


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def _step_dict(s: Summary, load: float, slo_ms: float, max_error_rate: float) -> dict[str, Any]:
    return {
        "load": load,
        "duration_s": _r(s.duration_s),
        "sent": s.sent,
        "ok": s.ok,
        **{k: _r(getattr(s, k), 4 if "rate" in k and "rps" not in k else 3) for k in STEP_FIELDS},
        "errors_by_status": s.errors_by_status,
        "stage_ms": {k: _r(v) for k, v in s.stage_ms.items()},
        "meets_slo": s.meets_slo(slo_ms, max_error_rate),
    }


def _point_dict(pr: PointResult, scenario: Scenario, slo_ms: float) -> dict[str, Any]:
    steps = [
        {
            **_step_dict(s, load, slo_ms, scenario.max_error_rate),
            "cpu_cores": pr.run.cpu_cores(*window),
        }
        for s, load, window in zip(
            pr.steps, pr.run.scenario.steps, pr.run.step_windows, strict=False
        )
    ]
    idx, meets = headline_step(pr.steps, slo_ms, scenario.max_error_rate)
    head = steps[idx]
    return {
        "label": pr.point.label,
        "replicas": pr.point.replicas,
        "gpus": pr.point.gpus,
        "throughput_rps": head["throughput_rps"],
        "goodput_rps": head["goodput_rps"],
        "p50_ms": head["p50_ms"],
        "p90_ms": head["p90_ms"],
        "p99_ms": head["p99_ms"],
        "max_ms": head["max_ms"],
        "error_rate": head["error_rate"],
        "degraded_rate": head["degraded_rate"],
        "offered_rps": head["offered_rps"],
        "load": head["load"],
        "headline_step": idx,
        "meets_slo": meets,
        "peak_throughput_rps": max(s["throughput_rps"] for s in steps),
        "stage_ms": head["stage_ms"],
        "errors_by_status": pr.total.errors_by_status,
        "requests": pr.total.sent,
        "replicas_seen": pr.deployed.replicas_seen,
        "deploy_s": _r(pr.deployed.deploy_s, 1),
        "stopped_by": pr.run.stopped_by,
        "unsupported_tasks": pr.run.unsupported,
        "client_cpu_percent": _r(pr.run.client_cpu_percent, 1),
        "host_load_1m": _r(pr.run.host_load, 2),
        "max_send_lag_ms": _r(pr.run.max_lag_ms, 1),
        "csv_files": [p.name for p in pr.csv_files],
        "steps": steps,
    }


def _cost(gpus: float, rps: float, usd: float) -> float | None:
    return _r(gpus * usd / 3600.0 / rps * 1000.0, 6) if rps > 0 and gpus > 0 else None


def build_report(
    results: list[PointResult],
    *,
    scenario: Scenario,
    axis: str,
    gpu_standin: bool,
    gpu_hour_usd: float,
    target_rps: float | None = None,
    url: str = "",
    error: str | None = None,
    extra: dict[str, Any] | None = None,
    capacity_layout: Layout | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (schema in the module docstring and README)."""
    slo = scenario.slo_p99_ms
    points = [_point_dict(pr, scenario, slo) for pr in results]
    base = next((p for p in points if p["throughput_rps"] > 0 and p["gpus"] > 0), None)
    for p in points:
        p["cost_per_1k_requests"] = _cost(p["gpus"], p["throughput_rps"], gpu_hour_usd)
        if base is None or p["gpus"] <= 0:
            p["scaling_efficiency"] = 0.0
        else:
            per_gpu = base["throughput_rps"] / base["gpus"]
            p["scaling_efficiency"] = _r(p["throughput_rps"] / p["gpus"] / per_gpu, 4)
    meeting = [p for p in points if p["meets_slo"]]
    min_gpus = estimate = None
    if target_rps:
        enough = [p for p in meeting if p["throughput_rps"] >= target_rps]
        if enough:
            min_gpus = min(p["gpus"] for p in enough)
        elif meeting:
            best = max(meeting, key=lambda p: p["throughput_rps"] / p["gpus"])
            estimate = math.ceil(target_rps / (best["throughput_rps"] / best["gpus"]))
    costed = [p for p in points if p["cost_per_1k_requests"] is not None]
    chosen, basis = None, "no point served requests"
    if min_gpus is not None:
        chosen = next(p for p in meeting if p["gpus"] == min_gpus)
        basis = f"smallest point meeting {target_rps:g} rps at the SLO"
    elif [p for p in meeting if p in costed]:
        chosen = min((p for p in meeting if p in costed), key=lambda p: p["cost_per_1k_requests"])
        basis = "cheapest point meeting the SLO"
    elif costed:
        chosen = min(costed, key=lambda p: p["cost_per_1k_requests"])
        basis = "cheapest point (none met the SLO)"
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "url": url,
        "scenario": scenario.name,
        "scenario_config": scenario.model_dump(mode="json"),
        "mode": scenario.mode,
        "axis": axis,
        "gpu_standin": gpu_standin,
        "slo_p99_ms": slo,
        "max_error_rate": scenario.max_error_rate,
        "target_rps": target_rps,
        "gpu_hour_usd": gpu_hour_usd,
        "points": points,
        "scaling_efficiency": points[-1]["scaling_efficiency"] if points else 0.0,
        "cost_per_1k_requests": chosen["cost_per_1k_requests"] if chosen else None,
        "cost_basis": basis,
        "min_gpus_for_target": min_gpus,
        "min_gpus_for_target_estimate": estimate,
        "error": error,
        "host_cpus": os.cpu_count(),
        "capacity": predict(points, capacity_layout, _mean_think_s(scenario))
        if capacity_layout
        else None,
        **(extra or {}),
    }


def _mean_think_s(scenario: Scenario) -> float:
    think = scenario.think_time_s
    return sum(think) / 2 if scenario.mode == "closed" else 0.0


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _headlines(report: dict[str, Any]) -> list[str]:
    unit = "GPU"
    lines = [
        f"scenario **{report['scenario']}** ({report['mode']} loop), sweep over "
        f"**{report['axis']}**, SLO p99 ≤ {report['slo_p99_ms']:g} ms",
        f"scaling efficiency at the largest point: **{report['scaling_efficiency']:.2f}**",
    ]
    if report["gpu_standin"]:
        lines.append("no GPUs in this cluster: each replica stands in for one GPU below")
    cost = report["cost_per_1k_requests"]
    if cost is not None:
        lines.append(
            f"cost per 1,000 requests: **${cost:.4f}** at ${report['gpu_hour_usd']:g} per "
            f"{unit}-hour ({report['cost_basis']})"
        )
    if report["target_rps"]:
        if report["min_gpus_for_target"] is not None:
            lines.append(
                f"fewest {unit}s meeting {report['target_rps']:g} rps at the SLO: "
                f"**{report['min_gpus_for_target']:g}**"
            )
        else:
            est = report["min_gpus_for_target_estimate"]
            lines.append(
                f"no measured point met {report['target_rps']:g} rps at the SLO"
                + (f"; linear estimate: **{est}** {unit}s" if est else "")
            )
    few = [
        f"{p['label']} ({p['steps'][p['headline_step']]['ok']})"
        for p in report["points"]
        if p["steps"][p["headline_step"]]["ok"] < FEW_ANSWERS
    ]
    if few:
        lines.append(
            f"fewer than {FEW_ANSWERS} answers behind the headline figures of "
            f"{', '.join(few)}: p99 is about the maximum there; measure longer (--duration)"
        )
    busiest = max((p["host_load_1m"] for p in report["points"]), default=0.0)
    if report.get("host_cpus") and busiest > report["host_cpus"]:
        lines.append(
            f"the host was oversubscribed (load average up to {busiest:.1f} on "
            f"{report['host_cpus']} cores, the generator included): figures are noisy"
        )
    if report.get("error"):
        lines.append(f"sweep stopped early: {report['error']}")
    return lines


POINT_COLUMNS = (
    ("replicas", "replicas"),
    ("gpus", "GPUs"),
    ("load", "load"),
    ("throughput_rps", "throughput/s"),
    ("goodput_rps", "goodput/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("error_rate", "errors"),
    ("degraded_rate", "degraded"),
    ("meets_slo", "meets SLO"),
    ("scaling_efficiency", "efficiency"),
    ("cost_per_1k_requests", "$/1k req"),
)


def _cell(key: str, value: Any) -> str:
    if key in ("error_rate", "degraded_rate") and value is not None:
        return f"{value:.1%}"
    if key == "cost_per_1k_requests":
        return _fmt(value, 4)
    if key == "scaling_efficiency":
        return _fmt(value, 2)
    return _fmt(value)


def _markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    out = [f"# llmrec load test: {report['scenario']}", ""]
    out += [f"- {line}" for line in _headlines(report)]
    out += ["", "## Points (headline step of each)", ""]
    out.append("| " + " | ".join(h for _, h in POINT_COLUMNS) + " |")
    out.append("|" + "---|" * len(POINT_COLUMNS))
    for p in report["points"]:
        out.append("| " + " | ".join(_cell(k, p.get(k)) for k, _ in POINT_COLUMNS) + " |")
    out += ["", "## Every load step", ""]
    out.append(
        "| point | load | offered/s | throughput/s | goodput/s | p50 | p90 | p99 | max | errors |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for p in report["points"]:
        for s in p["steps"]:
            out.append(
                f"| {p['label']} | {s['load']:g} | {s['offered_rps']:.1f} | "
                f"{s['throughput_rps']:.1f} | {s['goodput_rps']:.1f} | {s['p50_ms']:.0f} | "
                f"{s['p90_ms']:.0f} | {s['p99_ms']:.0f} | {s['max_ms']:.0f} | "
                f"{s['error_rate']:.1%} {s['errors_by_status'] or ''} |"
            )
    out += ["", "## Per-stage server time (mean ms, headline step)", ""]
    stages = sorted({k for p in report["points"] for k in p["stage_ms"]})
    if stages:
        out.append("| point | " + " | ".join(stages) + " |")
        out.append("|---|" + "---|" * len(stages))
        for p in report["points"]:
            out.append(
                f"| {p['label']} | " + " | ".join(_fmt(p["stage_ms"].get(s)) for s in stages) + " |"
            )
    if report.get("capacity"):
        out += ["", "## Capacity model: predicted against measured (peak step)", ""]
        out += prediction_table(report["capacity"])
    out += ["", "## Replicas seen, host load", ""]
    for p in report["points"]:
        out.append(
            f"- {p['label']}: {p['replicas_seen'] or 'replicas not reported'}; host load "
            f"{p['host_load_1m']:.1f}, load generator {p['client_cpu_percent']:.0f}% of a core"
        )
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{name}]({file})" for name, file in plots.items()]
    out += [
        "",
        "## How to read this",
        "",
        "Throughput counts successful answers per second; goodput those that were not "
        "degraded and took at most the SLO latency. Latency percentiles are nearest-rank over "
        "every answered request. A point's headline step is its highest-throughput load step "
        "that met the SLO, or its best-goodput step when none did. Locust-format CSV files of "
        "every point are beside this report.",
        "",
    ]
    return "\n".join(out)


def _html(report: dict[str, Any], plots: dict[str, str]) -> str:
    esc = html.escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(_cell(k, p.get(k)))}</td>" for k, _ in POINT_COLUMNS) + "</tr>"
        for p in report["points"]
    )
    head = "".join(f"<th>{esc(h)}</th>" for _, h in POINT_COLUMNS)
    items = "".join(f"<li>{esc(line).replace('**', '')}</li>" for line in _headlines(report))
    images = "".join(
        f'<figure><img src="{esc(file)}" alt="{esc(name)}"><figcaption>{esc(name)}'
        "</figcaption></figure>"
        for name, file in plots.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>llmrec load test: {esc(report["scenario"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 72rem; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; }}
img {{ max-width: 100%; }} figure {{ margin: 1rem 0; }}
</style></head><body>
<h1>llmrec load test: {esc(report["scenario"])}</h1>
<ul>{items}</ul>
<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
{images}
<p>Full numbers: <a href="report.json">report.json</a>, <a href="report.md">report.md</a>.</p>
</body></html>
"""


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md, report.html and the plots; returns every path."""
    from loadtest.plots import make_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = make_plots(report, out_dir) if report["points"] else {}
    report["plots"] = {name: path.name for name, path in plots.items()}
    paths = {name: path for name, path in plots.items()}
    paths["json"] = out_dir / "report.json"
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["md"] = out_dir / "report.md"
    paths["md"].write_text(_markdown(report, report["plots"]))
    paths["html"] = out_dir / "report.html"
    paths["html"].write_text(_html(report, report["plots"]))
    return paths
