"""Which node runs which deployment on a multi-node cluster: the one place naming the resources.

A cluster has three kinds of node. The head runs Serve's controller and an HTTP proxy and
offers no CPUs to replicas. GPU workers run the encoder and the reranker (each replica asks
for one GPU, so it can only land there). CPU shard workers declare the custom resource
`SHARD_RESOURCE`; every `ShardRetriever` replica asks for a sliver of it, so retrievers land
only on those nodes, never on a GPU node or the head. The router asks for CPUs only and lands
wherever they are free.

`cluster/ray-cluster.yaml` (`ray up`) and `cluster/k8s.py` (KubeRay) declare these names on
their nodes, and `cluster_app_args` writes the matching requests into the app's args; the
tests check both against the constants here.
"""

from __future__ import annotations

import copy
from typing import Any

from retrieval.config import AppConfig

__all__ = [
    "SERVE_HTTP_HOST",
    "SHARD_NODE_UNITS",
    "SHARD_REPLICA_UNITS",
    "SHARD_RESOURCE",
    "cluster_app_args",
    "cluster_serve_config",
    "gpus_needed",
    "shard_node_resources",
]

SHARD_RESOURCE = "llmrec_shard"
"""Custom Ray resource a CPU shard node declares (`ray start --resources`)."""
SHARD_NODE_UNITS = 1
"""Units of `SHARD_RESOURCE` one shard node declares (Ray's cluster launcher takes integers)."""
SHARD_REPLICA_UNITS = 0.01
"""Units each retriever replica asks for: a node takes up to 100 replicas by this resource, so
its CPUs (`retriever.num_cpus` each) are what bound how many land on it."""
SERVE_HTTP_HOST = "0.0.0.0"
"""The proxies' listen address on a cluster: the load balancer or Service reaches every node."""


def shard_node_resources() -> dict[str, int]:
    """The custom resources a CPU shard node declares."""
    return {SHARD_RESOURCE: SHARD_NODE_UNITS}


def cluster_app_args(
    args: dict[str, Any], *, gpu: bool = True, data_dir: str | None = None
) -> dict[str, Any]:
    """The app's `args` (an AppConfig dict, as in ray_config.yaml) placed for a cluster.

    Retriever replicas ask for `SHARD_REPLICA_UNITS` of `SHARD_RESOURCE`. With `gpu`, the
    encoder and the reranker ask for one GPU per replica (an encoder `device: cpu` becomes
    `cuda`, an `engine: onnx` becomes `auto`, the two settings a GPU replica cannot keep).
    `data_dir`, when given, replaces the dataset location as is (a path every node sees, or an
    object-store URI). The input is not changed. Raises `pydantic.ValidationError` when the
    result is not a valid AppConfig, so a bad render fails here rather than at deploy time.
    """
    out = copy.deepcopy(args)
    retriever = out.setdefault("retriever", {})
    retriever["resources"] = {
        **(retriever.get("resources") or {}),
        SHARD_RESOURCE: SHARD_REPLICA_UNITS,
    }
    if gpu:
        encoder = out.setdefault("encoder", {})
        encoder["num_gpus"] = 1
        if encoder.get("device") == "cpu":
            encoder["device"] = "cuda"
        if encoder.get("engine") == "onnx":
            encoder["engine"] = "auto"
        out.setdefault("reranker", {})["num_gpus"] = 1
    if data_dir is not None:
        out["data_dir"] = data_dir
    AppConfig.model_validate(out)
    return out


def gpus_needed(cfg: AppConfig) -> tuple[int, int]:
    """GPUs the app asks for at start and at full scale: (fewest, most).

    Counts encoder replicas (the autoscaling bounds, or the fixed count) and reranker replicas
    (none when it is disabled), each with its `num_gpus`, rounded up to whole GPUs.
    """
    enc, rr = cfg.encoder, cfg.reranker
    scaling = enc.autoscaling
    enc_min = scaling.min_replicas if scaling is not None else enc.num_replicas
    enc_max = scaling.max_replicas if scaling is not None else enc.num_replicas
    rr_gpus = rr.num_replicas * rr.num_gpus if rr.enabled else 0.0
    return (
        _ceil(enc_min * enc.num_gpus + rr_gpus),
        _ceil(enc_max * enc.num_gpus + rr_gpus),
    )


def cluster_serve_config(
    serve_config: dict[str, Any], *, gpu: bool = True, data_dir: str | None = None
) -> tuple[dict[str, Any], AppConfig]:
    """A Serve config (as loaded from ray_config.yaml) made for a multi-node cluster.

    Every application's `args` go through `cluster_app_args`; the proxies listen on
    `SERVE_HTTP_HOST` (same port). Returns the new config and the first application's
    validated AppConfig; the input is not changed. Raises `ValueError` for a config without
    applications.
    """
    out = copy.deepcopy(serve_config)
    apps = out.get("applications") or []
    if not apps:
        raise ValueError("the Serve config has no `applications`")
    for app in apps:
        app["args"] = cluster_app_args(app.get("args") or {}, gpu=gpu, data_dir=data_dir)
    out["http_options"] = {**(out.get("http_options") or {}), "host": SERVE_HTTP_HOST}
    return out, AppConfig.model_validate(apps[0]["args"])


def _ceil(x: float) -> int:
    whole = int(x)
    return whole if x <= whole + 1e-9 else whole + 1
