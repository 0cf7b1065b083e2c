"""Deploying the points of a load-test sweep on a Serve cluster, and putting things back.

`plan_points` turns `gpus=1,2,4` / `replicas=1,2,4` into AppConfig overrides
(encoder and reranker replica counts and `num_gpus`); `ServeDeployer(point)`
renders and `serve deploy`s one point, then waits until Serve runs exactly those
replicas (`settled`) and `/v1/health` is ready; `restore_app` redeploys what ran
before. `llmrec loadtest --sweep` drives it; `loadtest.sweep.run_sweep` measures.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cluster import local
from loadtest.capacity import Layout
from loadtest.errors import LoadtestError
from loadtest.sweep import Deployed, SweepPoint
from retrieval.config import AppConfig
from retrieval.shards import ShardLayout

__all__ = [
    "APP_NAME",
    "ENCODER",
    "RERANKER",
    "ServeDeployer",
    "capacity_layout",
    "local_gpus",
    "logical_cpus_needed",
    "plan_points",
    "restore_app",
    "settled",
]

APP_NAME = "llmrec"
ENCODER, RERANKER = "Encoder", "Reranker"


def plan_points(
    axis: str, counts: list[int], cfg: AppConfig, *, gpus_available: bool, encoder_gpu_share: float
) -> list[tuple[SweepPoint, dict[str, Any]]]:
    """Each point with its AppConfig overrides.

    Both pools (encoder, and the reranker when enabled) get `n` replicas, fixed (the
    encoder's autoscaling is turned off for the sweep). With GPUs,
    `gpus=n` packs one encoder and one reranker replica on each GPU (the encoder takes
    `encoder_gpu_share` of it), and `replicas=n` keeps the config's `num_gpus` per
    replica. Without GPUs every replica asks for none and stands in for one GPU.
    """
    rerank = cfg.reranker.enabled
    points = []
    for n in counts:
        enc: dict[str, Any] = {"num_replicas": n, "autoscaling": None}
        rr: dict[str, Any] = {"num_replicas": n}
        if not gpus_available:
            enc["num_gpus"] = rr["num_gpus"] = 0
            gpus: float = n
        elif axis == "gpus":
            enc["num_gpus"] = encoder_gpu_share if rerank else 1.0
            rr["num_gpus"] = 1.0 - encoder_gpu_share
            gpus = n
        else:
            per_replica = cfg.encoder.num_gpus + (cfg.reranker.num_gpus if rerank else 0.0)
            gpus = n * per_replica if per_replica > 0 else n
        overrides: dict[str, Any] = {"encoder": enc}
        if rerank:
            overrides["reranker"] = rr
        points.append((SweepPoint(replicas=n, gpus=gpus, label=f"{axis}={n}"), overrides))
    return points


def logical_cpus_needed(cfg: AppConfig, max_replicas: int, n_shards: int) -> int:
    """Logical CPUs the largest point asks Ray for, with room for a rolling router update."""
    per_replica = cfg.encoder.num_cpus + (cfg.reranker.num_cpus if cfg.reranker.enabled else 0)
    router = cfg.router.num_cpus * cfg.router.num_replicas
    retrievers = ShardLayout(n_shards, cfg.retriever.shards_per_replica).n_replicas
    need = max_replicas * per_replica + 2 * router + retrievers * cfg.retriever.num_cpus
    return max(os.cpu_count() or 2, math.ceil(need + 0.5))


def settled(
    status: dict[str, Any] | None, expected: dict[str, int], since: float, app: str = APP_NAME
) -> tuple[bool, str]:
    """Whether `app`, deployed at or after unix time `since`, runs exactly `expected` replicas.

    Returns (settled, what it is waiting for). Raises LoadtestError when the deploy failed.
    """
    details = local.app_details(status, app)
    if details is None:
        return False, f"app {app!r} not deployed yet"
    state = details.get("status")
    if state in ("DEPLOY_FAILED", "UNHEALTHY"):
        raise LoadtestError(f"app {app!r} {state}: {str(details.get('message', ''))[:2000]}")
    if float(details.get("last_deployed_time_s") or 0) < since:
        return False, "the new config is not applied yet"
    deployments = details.get("deployments") or {}
    missing = sorted(set(expected) - set(deployments))
    if missing:
        return False, f"waiting for deployments {missing}"
    waiting = []
    for name, want in expected.items():
        states = {k: v for k, v in (deployments[name].get("replica_states") or {}).items() if v}
        if states != {"RUNNING": want}:
            waiting.append(f"{name} {states or 'no replicas'} of {want}")
    if state != "RUNNING" or waiting:
        return False, f"app {state}; " + ("; ".join(waiting) or "deployments updating")
    return True, "ready"


def _wait_for_replicas(
    dashboard: str,
    expected: dict[str, int],
    since: float,
    timeout_s: float,
    notes: Callable[[str], None],
) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    what = "no answer from `serve status`"
    while time.monotonic() < deadline:
        status = local.serve_status(dashboard)
        done, what = settled(status, expected, since)
        if done:
            return local.replicas_running(status, APP_NAME) or {}
        notes(f"waiting: {what}")
        time.sleep(2.0)
    raise LoadtestError(f"the app did not reach {expected} in {timeout_s:.0f}s ({what})")


def capacity_layout(cfg: AppConfig, n_shards: int, host_cores: float) -> Layout:
    """How the deployments of `cfg` grow over a sweep (`plan_points`), for the capacity model:
    the encoder pool and (when enabled) the reranker pool scale; the router, the retriever
    replicas and the proxy stay; an encoder replica works on its `torch_threads` cores, the
    reranker's engine on every core, the rest on one each."""
    scaled = (ENCODER, RERANKER) if cfg.reranker.enabled else (ENCODER,)
    return Layout(
        scaled=scaled,
        fixed={
            "Router": cfg.router.num_replicas,
            "ShardRetriever": ShardLayout(n_shards, cfg.retriever.shards_per_replica).n_replicas,
            "proxy": 1,
        },
        cores_per_replica={ENCODER: float(cfg.encoder.torch_threads), RERANKER: host_cores},
        host_cores=host_cores,
    )


def local_gpus() -> int:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in proc.stdout.splitlines())


class ServeDeployer:
    """Deploys one sweep point: `serve deploy` of the rendered config, then waits for it."""

    def __init__(
        self,
        config: Path,
        data_dir: Path,
        base_overrides: dict[str, Any],
        plan: dict[str, dict[str, Any]],
        *,
        rerank: bool,
        num_cpus: int,
        dashboard: str,
        timeout_s: float,
        notes: Callable[[str], None],
        address: str | None = None,
        serve_overrides: dict[str, Any] | None = None,
    ) -> None:
        """`address`: a cluster to deploy to (else the local head, started when needed);
        `serve_overrides`: laid over the Serve config's own keys (`local.up`)."""
        self.address, self.serve_overrides = address, serve_overrides
        self.config, self.data_dir = config, data_dir
        self.base_overrides, self.plan = base_overrides, plan
        self.rerank, self.num_cpus = rerank, num_cpus
        self.dashboard, self.timeout_s, self.notes = dashboard, timeout_s, notes

    def __call__(self, point: SweepPoint) -> Deployed:
        overrides = local.merge_overrides(self.base_overrides, self.plan[point.label])
        expected = {ENCODER: point.replicas}
        if self.rerank:
            expected[RERANKER] = point.replicas
        since, t = time.time() - 1.0, time.perf_counter()
        self.notes(f"{point.label}: deploying {expected}")
        try:
            url = local.up(
                self.config,
                data_dir=self.data_dir,
                overrides=overrides,
                serve_overrides=self.serve_overrides,
                address=self.address,
                num_cpus=self.num_cpus,
                timeout_s=self.timeout_s,
                on_wait=lambda code, body: self.notes(
                    f"{point.label}: waiting for /v1/health ({code or 'no answer'})"
                ),
            )
            seen = _wait_for_replicas(
                self.dashboard,
                expected,
                since,
                self.timeout_s,
                lambda text: self.notes(f"{point.label}: {text}"),
            )
        except local.ClusterError as exc:
            raise LoadtestError(str(exc)) from exc
        return Deployed(url, seen, time.perf_counter() - t)


def restore_app(
    config: Path, app_config: dict[str, Any] | None, timeout_s: float, log: Callable[[str], None]
) -> None:
    """Redeploy the app config Serve ran before the sweep (as `serve config` reported it)."""
    if app_config is None:
        log("no app ran before the sweep; the last point stays deployed")
        return
    serve_config = local.load_serve_config(config)
    serve_config["applications"] = [app_config]
    path = local.RUN_DIR / "restore_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(serve_config, sort_keys=False))
    log("redeploying the app config that ran before the sweep")
    try:
        local.up(path, timeout_s=timeout_s)
    except local.ClusterError as exc:
        log(f"could not redeploy it: {exc}")
