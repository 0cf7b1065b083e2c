"""`build_app(args)`: the Serve application from an `AppConfig` dict.

`ray_config.yaml` points here (`import_path: deployments.app:build_app`). The
graph: Router (HTTP ingress) → Encoder pool, ShardRetriever deployments serving
the shards of the index manifest (`retriever.shards_per_replica` each), and the
vLLM Reranker when enabled.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.encoder.deployment import Encoder
from deployments.errors import QueueFull
from deployments.retriever.deployment import bind_shards
from deployments.router.deployment import Router
from retrieval.artifacts import manifest_of
from retrieval.config import AppConfig, resolve_path
from retrieval.shards import ShardLayout

__all__ = ["build_app", "internal_options"]


def internal_options(cfg: AppConfig) -> dict[str, Any]:
    """Serve options of every deployment the router calls (`AppConfig.internal_access_log`)."""
    return {} if cfg.internal_access_log else {"logging_config": {"enable_access_log": False}}


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Validate `args` as an AppConfig and bind the deployment graph.

    Runs where the app is deployed from (the head): it reads only the index manifest, from
    `data_dir` or its storage, and hands every replica the `data_dir` itself, so each one
    reads its own node's copy (see retrieval/artifacts.py)."""
    cfg = AppConfig.model_validate(args or {})
    manifest = manifest_of(cfg.data_source)
    enc = cfg.encoder
    # The deployments behind the router: Serve's access log only where the config asks.
    internal = internal_options(cfg)
    # Fixed num_replicas or autoscaling_config, GPUs and queue depth: see EncoderConfig.
    encoder = Encoder.options(**enc.deployment_options(), **internal).bind(enc.model_dump())
    layout = ShardLayout(manifest.n_shards, cfg.retriever.shards_per_replica)
    data = {"data_dir": cfg.data_source, "cache_dir": cfg.cache_dir}
    shards = [
        # One replica each (it owns its shards' files); search settings apply in place.
        bind_shards(data, layout, g, cfg.retriever, manifest.dim, options=internal)
        for g in range(layout.n_replicas)
    ]
    reranker = None
    if cfg.reranker.enabled:
        from deployments.reranker.deployment import Reranker  # imports vLLM: only when used

        rr = cfg.reranker
        reranker = Reranker.options(
            num_replicas=rr.num_replicas,
            max_ongoing_requests=rr.max_ongoing_requests,
            # Beyond this Serve refuses at once and the router answers without the LLM.
            max_queued_requests=rr.max_queued_requests,
            # vLLM on CPU takes about a minute to load and answers probes slowly under load.
            health_check_timeout_s=120,
            **internal,
            ray_actor_options=rr.actor_options(
                runtime_env={
                    "env_vars": {
                        "VLLM_CPU_KVCACHE_SPACE": str(rr.kv_cache_gib),
                        "HF_HUB_OFFLINE": "1",
                    }
                },
            ),
        ).bind(rr.model_dump(), str(resolve_path(cfg.models_dir)))
    rt = cfg.router
    return Router.options(
        num_replicas=rt.num_replicas,
        max_ongoing_requests=rt.max_ongoing_requests,
        max_queued_requests=rt.max_queued_requests,
        # Past the queue Serve refuses at once, with the same answer as the router's own.
        backpressure_config={
            "status_code": QueueFull.status,
            "retry_after_s": QueueFull.retry_after_s,
        },
        ray_actor_options=rt.actor_options(),
    ).bind(cfg.model_dump(), encoder, shards, reranker)
