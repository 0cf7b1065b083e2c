"""The KubeRay `RayService` manifest of llmrec, rendered from ray_config.yaml.

`render_rayservice` reads the Serve config, places it for a cluster
(`cluster.placement.cluster_serve_config`) and embeds the result as the manifest's
`spec.serveConfigV2`, so the manifest and ray_config.yaml never say different things. The
Ray cluster it describes has a head group (no CPUs for replicas: Serve's controller and a
proxy), a GPU worker group (encoder and reranker, one GPU per pod) and a CPU shard worker
group whose pods declare `placement.SHARD_RESOURCE` (the retrievers). Token auth is on
(`authOptions`, KubeRay 1.5.1 or newer): KubeRay makes the token Secret, or uses the one
named by `RenderOptions.auth_secret` (key `auth_token`).

`render_text` gives what `llmrec k8s render` prints: the manifest, or only the Serve config
for `serve deploy` to a `ray up` cluster (cluster/ray-cluster.yaml).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import yaml

from cluster import placement
from retrieval.config import AppConfig

__all__ = [
    "DEFAULT_IMAGE",
    "GPU_GROUP",
    "SHARD_GROUP",
    "PodShape",
    "RenderOptions",
    "parse_ray_start_resources",
    "ray_start_resources",
    "render_rayservice",
    "render_serve_config",
    "render_text",
    "to_yaml",
]

DEFAULT_IMAGE = "llmrec:latest"
GPU_GROUP = "gpu"
SHARD_GROUP = "cpu-shard"
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000}
RenderKind = Literal["rayservice", "serve"]


@dataclass(frozen=True)
class PodShape:
    """CPU and memory (Kubernetes quantities) of one pod, and its GPUs; requests = limits."""

    cpu: str
    memory: str
    gpus: int = 0

    def resources(self) -> dict[str, dict[str, str]]:
        """The container's `resources`: equal requests and limits, so Ray sees what it gets."""
        amounts = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            amounts["nvidia.com/gpu"] = str(self.gpus)
        return {"requests": dict(amounts), "limits": dict(amounts)}


@dataclass(frozen=True)
class RenderOptions:
    """What varies between llmrec clusters; the rest comes from the Serve config."""

    name: str = "llmrec"
    """The RayService's name (its Services are named after it)."""
    namespace: str | None = None
    """Namespace of the RayService; None leaves it to `kubectl apply -n`."""
    image: str = DEFAULT_IMAGE
    """Image of every pod: llmrec installed, `llmrec models prepare` run, same Ray version."""
    gpu_workers: int = 2
    """GPU worker pods (one GPU each) for the encoder and the reranker; 0 keeps them on CPU."""
    cpu_workers: int = 2
    """CPU shard worker pods: the retrievers (and the router) run there."""
    data_dir: str | None = None
    """Dataset location on every pod (a mounted path or an object-store URI); None keeps the
    config's."""
    auth_secret: str | None = None
    """A Secret (key `auth_token`) holding the Ray token; None: KubeRay generates one."""
    head: PodShape = PodShape("4", "16Gi")
    gpu_worker: PodShape = PodShape("8", "32Gi", gpus=1)
    shard_worker: PodShape = PodShape("8", "32Gi")


def ray_start_resources(resources: dict[str, float]) -> str:
    """`rayStartParams.resources` as KubeRay expects it: a JSON object inside double quotes,
    its own quotes escaped (`"{\\"llmrec_shard\\": 1}"`)."""
    return '"' + json.dumps(resources).replace('"', '\\"') + '"'


def parse_ray_start_resources(value: str) -> dict[str, float]:
    """The resources of a `rayStartParams.resources` value (the inverse of
    `ray_start_resources`). Raises `ValueError` for any other shape."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise ValueError(f"rayStartParams.resources must be a quoted JSON object: {value!r}")
    parsed = json.loads(value[1:-1].replace('\\"', '"'))
    if not isinstance(parsed, dict):
        raise ValueError(f"rayStartParams.resources must hold a JSON object: {value!r}")
    return parsed


def render_serve_config(
    config_path: Path, *, gpu: bool, data_dir: str | None = None
) -> tuple[dict[str, Any], AppConfig]:
    """The Serve config at `config_path` placed for a cluster, and its validated AppConfig.

    Raises `FileNotFoundError` for a missing file and `pydantic.ValidationError` (a
    `ValueError`) when the placed args are not a valid AppConfig.
    """
    with Path(config_path).open() as f:
        config = yaml.safe_load(f)
    return placement.cluster_serve_config(config, gpu=gpu, data_dir=data_dir)


def render_rayservice(config_path: Path, options: RenderOptions | None = None) -> dict[str, Any]:
    """The `ray.io/v1` RayService for the Serve config at `config_path`.

    Raises `ValueError` when the worker counts cannot run the app: no CPU shard workers, or
    fewer GPU workers than the encoder and reranker replicas need at start.
    """
    options = options or RenderOptions()
    if options.cpu_workers < 1:
        raise ValueError("--cpu-workers must be >= 1: the retrievers run only on shard workers")
    if options.gpu_workers < 0:
        raise ValueError("--gpu-workers must be >= 0")
    gpu = options.gpu_workers > 0
    serve_config, cfg = render_serve_config(config_path, gpu=gpu, data_dir=options.data_dir)
    workers = [_shard_group(options)]
    if gpu:
        fewest, most = placement.gpus_needed(cfg)
        have = options.gpu_workers * options.gpu_worker.gpus
        if have < fewest:
            raise ValueError(
                f"the app needs {fewest} GPUs at start (encoder and reranker replicas); "
                f"--gpu-workers {options.gpu_workers} gives {have}"
            )
        workers.insert(0, _gpu_group(options, max_pods=max(options.gpu_workers, most)))
    auth: dict[str, Any] = {"mode": "token"}
    if options.auth_secret:
        auth["secretName"] = options.auth_secret
    metadata: dict[str, Any] = {
        "name": options.name,
        "labels": {"app.kubernetes.io/name": "llmrec"},
    }
    if options.namespace:
        metadata["namespace"] = options.namespace
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": to_yaml(serve_config),
            "rayClusterConfig": {
                "rayVersion": version("ray"),
                "enableInTreeAutoscaling": True,
                "authOptions": auth,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": _pod_template(
                        "ray-head",
                        options.image,
                        options.head,
                        ports=[{"name": n, "containerPort": p} for n, p in HEAD_PORTS.items()],
                    ),
                },
                "workerGroupSpecs": workers,
            },
        },
    }


def render_text(config_path: Path, options: RenderOptions, kind: RenderKind = "rayservice") -> str:
    """YAML of the RayService manifest, or with `kind="serve"` only its Serve config (for
    `serve deploy` to a `ray up` cluster: the same placement, GPUs when `gpu_workers`)."""
    if kind == "serve":
        config, _ = render_serve_config(
            config_path, gpu=options.gpu_workers > 0, data_dir=options.data_dir
        )
        return to_yaml(config)
    return to_yaml(render_rayservice(config_path, options))


def _gpu_group(options: RenderOptions, *, max_pods: int) -> dict[str, Any]:
    template = _pod_template("ray-worker", options.image, options.gpu_worker)
    template["spec"]["tolerations"] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    return {
        "groupName": GPU_GROUP,
        "replicas": options.gpu_workers,
        "minReplicas": options.gpu_workers,
        "maxReplicas": max_pods,
        "rayStartParams": {"num-gpus": str(options.gpu_worker.gpus)},
        "template": template,
    }


def _shard_group(options: RenderOptions) -> dict[str, Any]:
    return {
        "groupName": SHARD_GROUP,
        "replicas": options.cpu_workers,
        "minReplicas": options.cpu_workers,
        "maxReplicas": options.cpu_workers,
        "rayStartParams": {"resources": ray_start_resources(placement.shard_node_resources())},
        "template": _pod_template("ray-worker", options.image, options.shard_worker),
    }


def _pod_template(
    container: str, image: str, shape: PodShape, *, ports: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": container, "image": image, "resources": shape.resources()}
    if ports:
        spec["ports"] = ports
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": "llmrec"}},
        "spec": {"containers": [spec]},
    }


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the embedded Serve config) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(data: Any) -> str:
    """YAML of `data` in its own key order, multi-line strings as literal blocks."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
