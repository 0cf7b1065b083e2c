"""PNG plots of a report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

__all__ = ["chaos_timeline", "make_plots"]


def _gpu_label(report: dict[str, Any]) -> str:
    return "GPUs (replicas standing in)" if report["gpu_standin"] else "GPUs"


def _throughput(report: dict[str, Any], path: Path) -> None:
    points = report["points"]
    gpus = [p["gpus"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(gpus, [p["throughput_rps"] for p in points], "o-", label="throughput (headline)")
    ax.plot(gpus, [p["goodput_rps"] for p in points], "s-", label="goodput (within SLO)")
    ax.plot(gpus, [p["peak_throughput_rps"] for p in points], "^:", label="peak throughput")
    base = next((p for p in points if p["throughput_rps"] > 0 and p["gpus"] > 0), None)
    if base is not None:
        per_gpu = base["throughput_rps"] / base["gpus"]
        ax.plot(gpus, [g * per_gpu for g in gpus], "k--", alpha=0.6, label="linear ideal")
    if report.get("target_rps"):
        ax.axhline(report["target_rps"], color="tab:red", ls=":", label="target")
    ax.set_xlabel(_gpu_label(report))
    ax.set_ylabel("requests/s")
    ax.set_xticks(gpus)
    ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput vs {_gpu_label(report)} — {report['scenario']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency(report: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, p in enumerate(report["points"]):
        color = f"C{i}"
        offered = [s["offered_rps"] for s in p["steps"]]
        ax.plot(
            offered, [s["p99_ms"] for s in p["steps"]], "o-", color=color, label=f"{p['label']} p99"
        )
        ax.plot(
            offered,
            [s["p90_ms"] for s in p["steps"]],
            "s--",
            color=color,
            alpha=0.7,
            label=f"{p['label']} p90",
        )
        ax.plot(
            offered,
            [s["p50_ms"] for s in p["steps"]],
            "x:",
            color=color,
            alpha=0.7,
            label=f"{p['label']} p50",
        )
    ax.axhline(report["slo_p99_ms"], color="tab:red", ls="--", label="SLO (p99)")
    ax.set_xlabel("offered load (requests/s sent)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize="x-small")
    ax.set_title(f"Latency percentiles vs offered load — {report['scenario']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stages(report: dict[str, Any], path: Path) -> None:
    points = report["points"]
    stages = [s for s in dict.fromkeys(k for p in points for k in p["stage_ms"]) if s != "total"]
    labels = [p["label"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bottom = [0.0] * len(points)
    for j, stage in enumerate(stages):
        values = [p["stage_ms"].get(stage, 0.0) for p in points]
        ax.bar(labels, values, bottom=bottom, label=stage, color=f"C{j}")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    # What the server's total adds beyond the named stages, and what the client saw beyond it.
    server_other = [
        max(p["stage_ms"].get("total", 0.0) - b, 0.0) for p, b in zip(points, bottom, strict=True)
    ]
    ax.bar(labels, server_other, bottom=bottom, label="server other", color="0.7")
    bottom = [b + v for b, v in zip(bottom, server_other, strict=True)]
    client = [
        max(p["steps"][p["headline_step"]]["mean_ms"] - p["stage_ms"].get("total", 0.0), 0.0)
        for p in points
    ]
    ax.bar(labels, client, bottom=bottom, label="proxy + network + client", color="0.85")
    ax.set_ylabel("mean ms per request (headline step)")
    ax.set_title(f"Per-stage time — {report['scenario']}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Throughput vs GPUs (with the linear ideal), latency vs offered load, stage breakdown."""
    out_dir = Path(out_dir)
    paths = {
        "throughput_vs_gpus": out_dir / "throughput_vs_gpus.png",
        "latency_vs_load": out_dir / "latency_vs_load.png",
        "stage_breakdown": out_dir / "stage_breakdown.png",
    }
    _throughput(report, paths["throughput_vs_gpus"])
    _latency(report, paths["latency_vs_load"])
    _stages(report, paths["stage_breakdown"])
    return paths


def chaos_timeline(report: dict[str, Any], path: Path) -> None:
    """Success share and p99 per bucket of a chaos report, each kill a vertical line."""
    timeline = report["timeline"]
    t = [b["t_s"] for b in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    top.plot(t, [100 * b["success"] for b in timeline], "-", label="success")
    top.plot(t, [100 * b["degraded"] for b in timeline], ":", label="degraded")
    top.set_ylabel("% of requests")
    top.set_ylim(-2, 102)
    top.legend(loc="lower left")
    bottom.plot(t, [b["p99_ms"] for b in timeline], "-", color="C2", label="p99")
    bottom.axhline(report["p99_steady_ms"], color="k", ls="--", alpha=0.5, label="steady p99")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left")
    for k in report["kills"]:
        for ax in (top, bottom):
            ax.axvline(k["at_s"], color="tab:red", alpha=0.4)
        top.annotate(k["target"], (k["at_s"], 2), rotation=90, fontsize=7, color="tab:red")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.set_title("Chaos run: success and p99 over time (red: kills)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
