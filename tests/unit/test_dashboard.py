"""The Grafana dashboard in cluster/grafana/ asks only for series the deployments publish."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "llmrec.json"


def published() -> dict[str, str]:
    """Prometheus names of the llmrec metrics in the deployments' source -> their kind."""
    found: dict[str, str] = {}
    pattern = re.compile(r'metrics\.(Counter|Gauge|Histogram)\(\s*f?"(llmrec_[a-z_{}]+)"')
    for path in (ROOT / "deployments").rglob("*.py"):
        for kind, name in pattern.findall(path.read_text()):
            found[f"ray_{name}"] = kind
    from deployments.encoder.deployment import _Metrics as EncoderMetrics

    found.pop("ray_llmrec_encoder_{k}", None)
    found.update({f"ray_llmrec_encoder_{k}": "Counter" for k in EncoderMetrics.COUNTERS})
    found.update({f"ray_llmrec_encoder_{k}": "Gauge" for k in EncoderMetrics.GAUGES})
    return found


def series(name: str, kind: str) -> str:
    if kind == "Counter":
        return name if name.endswith("_total") else f"{name}_total"
    return f"{name}_bucket" if kind == "Histogram" else name


def test_every_panel_queries_a_published_series_and_every_stage_metric_has_a_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = set(re.findall(r"\bray_llmrec_[a-z_]+", " ".join(exprs)))
    known = {series(name, kind) for name, kind in published().items()}

    assert asked and asked <= known, asked - known
    router_and_llm = {s for s in known if not s.startswith("ray_llmrec_encoder_")}
    assert router_and_llm <= asked, router_and_llm - asked
    assert any("ray_serve_deployment_queued_queries" in e for e in exprs)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
