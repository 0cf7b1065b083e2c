"""The cluster configs, checked offline: the KubeRay manifest against the RayService CRD's
schema (cluster/kuberay/) and the Kubernetes pod schema, the Serve config it embeds against
AppConfig, and `ray up`'s config against Ray's own schema; all against cluster/placement.py."""

from __future__ import annotations

import copy
import importlib.util
import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml

from cluster import k8s, placement
from cluster.cli import main
from cluster.local import DEFAULT_CONFIG
from retrieval.config import PROJECT_ROOT, AppConfig

SCHEMA_PATH = PROJECT_ROOT / "cluster" / "kuberay" / "rayservice-schema.json"
RAY_CLUSTER_YAML = PROJECT_ROOT / "cluster" / "ray-cluster.yaml"
PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
K8S_VERSION = "1.33.0"  # the Kubernetes schema kubernetes-validate checks pod templates against


def _strict(schema: Any) -> Any:
    """`schema` with unknown fields refused wherever the CRD lists an object's fields, as the
    API server's strict field validation (kubectl's default) refuses them."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    listed = "properties" in out and "additionalProperties" not in out
    if listed and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def rayservice_validator() -> jsonschema.Draft7Validator:
    schema = _strict(json.loads(SCHEMA_PATH.read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def render(**overrides: Any) -> dict[str, Any]:
    return k8s.render_rayservice(DEFAULT_CONFIG, k8s.RenderOptions(**overrides))


def groups(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    workers = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return {g["groupName"]: g for g in workers}


def pod_templates(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    return {
        "head": cluster["headGroupSpec"]["template"],
        **{name: g["template"] for name, g in groups(manifest).items()},
    }


def validate_pod_template(name: str, template: dict[str, Any]) -> None:
    """Raise kubernetes_validate.ValidationError unless `template` is a core/v1
    PodTemplateSpec (checked as the template of a PodTemplate object, unknown fields refused)."""
    pod_template = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": name},
        "template": template,
    }
    kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)


def placed_app(manifest: dict[str, Any]) -> tuple[dict[str, Any], AppConfig]:
    serve = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    return serve, AppConfig.model_validate(serve["applications"][0]["args"])


# --- the KubeRay manifest -------------------------------------------------------------------


def test_the_rayservice_is_valid_against_the_kuberay_crd_schema(rayservice_validator):
    manifest = render()
    errors = [e.message for e in rayservice_validator.iter_errors(manifest)]
    assert errors == []
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert set(groups(manifest)) == {k8s.GPU_GROUP, k8s.SHARD_GROUP}


def test_every_pod_template_is_a_valid_kubernetes_pod_template():
    for name, template in pod_templates(render()).items():
        validate_pod_template(name, template)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("replicas", "2"),  # an int32, not a string
        ("maxReplicas", 2.5),
        ("rayStartParams", {"num-gpus": 1}),  # ray start params are strings
        ("rayStartParam", {}),  # not a field of a worker group
    ],
)
def test_a_wrong_worker_group_is_rejected(rayservice_validator, field, value):
    manifest = render()
    manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0][field] = value
    assert list(rayservice_validator.iter_errors(manifest))


def test_a_manifest_without_what_kuberay_requires_is_rejected(rayservice_validator):
    no_template = render()
    del no_template["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]
    bad_auth = render()
    bad_auth["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "password"
    no_containers = render()
    no_containers["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"] = {}
    for manifest in (no_template, bad_auth, no_containers):
        assert list(rayservice_validator.iter_errors(manifest))


def test_a_wrong_pod_template_is_rejected():
    template = copy.deepcopy(pod_templates(render())[k8s.GPU_GROUP])
    template["spec"]["containers"][0]["ports"] = [{"containerPort": "eight thousand"}]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod_template("gpu", template)
    template = copy.deepcopy(pod_templates(render())["head"])
    template["spec"]["containers"][0]["imagePullPolcy"] = "Always"  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod_template("head", template)


def test_serve_config_v2_is_ray_config_yaml_placed_on_the_shard_and_gpu_nodes():
    serve, cfg = placed_app(render(data_dir="s3://bucket/demo"))
    assert cfg.retriever.resources == {placement.SHARD_RESOURCE: placement.SHARD_REPLICA_UNITS}
    assert cfg.retriever.actor_options()["resources"] == {
        placement.SHARD_RESOURCE: placement.SHARD_REPLICA_UNITS
    }
    assert cfg.encoder.num_gpus == 1 and cfg.reranker.num_gpus == 1
    assert cfg.data_dir == "s3://bucket/demo"
    assert serve["http_options"]["host"] == placement.SERVE_HTTP_HOST
    # Everything else is ray_config.yaml as written: the two never drift apart.
    original = yaml.safe_load(DEFAULT_CONFIG.read_text())
    placed = serve["applications"][0]["args"]
    for section in ("encoder", "reranker"):
        placed[section].pop("num_gpus")
        original["applications"][0]["args"][section].pop("num_gpus", None)
    placed["retriever"].pop("resources")
    placed["data_dir"] = original["applications"][0]["args"]["data_dir"]
    assert placed == original["applications"][0]["args"]
    assert serve["proxy_location"] == original["proxy_location"]


def test_the_groups_declare_what_placement_asks_for():
    manifest = render(gpu_workers=3, cpu_workers=4)
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    shard = groups(manifest)[k8s.SHARD_GROUP]
    declared = k8s.parse_ray_start_resources(shard["rayStartParams"]["resources"])
    assert declared == placement.shard_node_resources()
    assert shard["replicas"] == 4
    gpu = groups(manifest)[k8s.GPU_GROUP]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["rayStartParams"]["num-gpus"] == limits["nvidia.com/gpu"] == "1"
    assert "resources" not in gpu["rayStartParams"]  # no retriever lands on a GPU node
    assert gpu["replicas"] == gpu["minReplicas"] == 3
    assert cluster["authOptions"] == {"mode": "token"}
    pinned = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray[")]
    assert pinned == [f"ray[serve]=={cluster['rayVersion']}"]  # the pods' Ray is the project's


def test_kuberay_resource_quoting_round_trips_and_refuses_plain_json():
    value = k8s.ray_start_resources({"llmrec_shard": 1})
    assert value == '"{\\"llmrec_shard\\": 1}"'
    assert k8s.parse_ray_start_resources(value) == {"llmrec_shard": 1}
    with pytest.raises(ValueError):
        k8s.parse_ray_start_resources('{"llmrec_shard": 1}')


def test_a_cpu_only_cluster_keeps_encoder_and_reranker_off_gpus(rayservice_validator):
    manifest = render(gpu_workers=0, auth_secret="llmrec-ray-token")
    assert list(rayservice_validator.iter_errors(manifest)) == []
    assert set(groups(manifest)) == {k8s.SHARD_GROUP}
    _, cfg = placed_app(manifest)
    assert cfg.encoder.num_gpus == 0 and cfg.reranker.num_gpus == 0
    assert cfg.retriever.resources == {placement.SHARD_RESOURCE: placement.SHARD_REPLICA_UNITS}
    auth = manifest["spec"]["rayClusterConfig"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "llmrec-ray-token"}


def test_worker_counts_that_cannot_run_the_app_fail_at_render_time():
    with pytest.raises(ValueError, match="needs 2 GPUs"):
        render(gpu_workers=1)  # encoder min_replicas 1 + one reranker
    with pytest.raises(ValueError, match="cpu-workers"):
        render(cpu_workers=0)


def test_a_config_that_is_not_a_valid_app_config_fails_at_render_time(tmp_path):
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["applications"][0]["args"]["reranker"]["explain_min_tokens"] = 64  # > max (32)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(pydantic.ValidationError, match="explain_min_tokens"):
        k8s.render_rayservice(path)


def test_cluster_app_args_turns_cpu_only_encoder_settings_into_gpu_ones():
    args = {"encoder": {"device": "cpu", "engine": "onnx"}, "reranker": {"enabled": False}}
    placed = placement.cluster_app_args(args)
    assert placed["encoder"] == {"device": "cuda", "engine": "auto", "num_gpus": 1}
    assert args == {"encoder": {"device": "cpu", "engine": "onnx"}, "reranker": {"enabled": False}}
    kept = placement.cluster_app_args({"retriever": {"resources": {"ssd": 1}}}, gpu=False)
    assert kept["retriever"]["resources"] == {"ssd": 1, placement.SHARD_RESOURCE: 0.01}
    assert "encoder" not in kept


def test_llmrec_k8s_render_writes_the_manifest_and_the_serve_config(tmp_path, capsys):
    out = tmp_path / "llmrec.yaml"
    assert main(["k8s", "render", "--config", str(DEFAULT_CONFIG), "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == render()
    capsys.readouterr()
    assert main(["k8s", "render", "--kind", "serve", "--gpu-workers", "0"]) == 0
    serve = yaml.safe_load(capsys.readouterr().out)
    args = serve["applications"][0]["args"]
    assert args["retriever"]["resources"] == {placement.SHARD_RESOURCE: 0.01}
    assert args["encoder"]["num_gpus"] == 0


# --- ray up ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> dict[str, Any]:
    return yaml.safe_load(RAY_CLUSTER_YAML.read_text())


def test_ray_cluster_yaml_is_valid_for_rays_cluster_launcher(ray_cluster):
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent  # no `import ray`
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(ray_cluster, schema)
    assert ray_cluster["head_node_type"] in ray_cluster["available_node_types"]


def test_ray_cluster_nodes_declare_placements_resources(ray_cluster):
    types = ray_cluster["available_node_types"]
    assert types["cpu_shard"]["resources"] == placement.shard_node_resources()
    others = [t for name, t in types.items() if name != "cpu_shard"]
    assert all(placement.SHARD_RESOURCE not in t["resources"] for t in others)
    assert types[ray_cluster["head_node_type"]]["resources"] == {"CPU": 0}
    # The GPU nodes hold the encoder and reranker replicas of ray_config.yaml, placed.
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    _, cfg = placement.cluster_serve_config(config, gpu=True)
    fewest, most = placement.gpus_needed(cfg)
    assert (types["gpu"]["min_workers"], types["gpu"]["max_workers"]) == (fewest, most)


def test_every_ray_start_on_the_cluster_requires_the_token(ray_cluster):
    starts = [
        c
        for c in ray_cluster["head_start_ray_commands"] + ray_cluster["worker_start_ray_commands"]
        if "ray start" in c
    ]
    assert len(starts) == 2
    assert all(c.startswith("RAY_AUTH_MODE=token ") for c in starts)
    assert "~/.ray/auth_token" in ray_cluster["file_mounts"]
