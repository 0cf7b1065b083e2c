"""EncoderConfig: cross-field checks that name the setting, Serve options, precision choice."""

from __future__ import annotations

import pytest
import yaml

from retrieval.config import PROJECT_ROOT, AppConfig, EncoderConfig
from retrieval.encoder import resolve_engine, resolve_precision
from retrieval.hardware import int8_reduce_range, select_encoder_precision


@pytest.mark.parametrize(
    "settings, names",
    [
        ({"max_batch_tokens": 128, "max_seq_length": 256}, "encoder.max_batch_tokens"),
        ({"max_batch_size": 300, "max_ongoing_requests": 256}, "encoder.max_ongoing_requests"),
        ({"device": "cuda", "num_gpus": 0}, "encoder.num_gpus"),
        ({"device": "cpu", "num_gpus": 1}, "encoder.num_gpus"),
        ({"precision": "fp16"}, "encoder.precision"),
        ({"engine": "onnx", "precision": "bf16"}, "encoder.engine"),
        ({"engine": "torch", "precision": "int8"}, "encoder.precision"),
        ({"device": "cuda", "num_gpus": 1, "precision": "int8"}, "encoder.precision"),
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "encoder.autoscaling"),
        (
            {"autoscaling": {"target_ongoing_requests": 512}, "max_ongoing_requests": 256},
            "encoder.autoscaling.target_ongoing_requests",
        ),
    ],
)
def test_inconsistent_settings_are_refused_naming_the_setting(settings, names):
    with pytest.raises(ValueError, match=names.replace(".", r"\.")):
        EncoderConfig.model_validate(settings)


def test_unknown_encoder_setting_is_refused():
    with pytest.raises(ValueError):
        AppConfig.model_validate({"encoder": {"max_tokens": 10}})


def test_fixed_pool_gets_num_replicas():
    options = EncoderConfig(num_replicas=3).deployment_options()
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}


def test_autoscaling_replaces_num_replicas():
    cfg = EncoderConfig(
        num_replicas=3,
        autoscaling={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32},
    )
    options = cfg.deployment_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"]["max_replicas"] == 4
    assert options["autoscaling_config"]["target_ongoing_requests"] == 32
    assert set(options["autoscaling_config"]) == {
        "min_replicas",
        "max_replicas",
        "target_ongoing_requests",
        "upscale_delay_s",
        "downscale_delay_s",
    }


def test_gpu_pool_asks_for_a_gpu_per_replica():
    cfg = EncoderConfig(device="cuda", num_gpus=1, precision="fp16")
    assert cfg.deployment_options()["ray_actor_options"]["num_gpus"] == 1


def test_shipped_serve_config_is_valid():
    serve_config = yaml.safe_load((PROJECT_ROOT / "ray_config.yaml").read_text())
    encoder = serve_config["applications"][0]["args"]["encoder"]
    cfg = EncoderConfig.model_validate(encoder)
    assert cfg.max_ongoing_requests >= cfg.max_batch_size
    assert cfg.max_batch_tokens >= cfg.max_seq_length


def test_batch_wait_auto_is_zero_on_cpu_and_2_ms_on_gpu():
    assert EncoderConfig().batch_wait_timeout_s == 0.0
    assert EncoderConfig(num_gpus=1).batch_wait_timeout_s == 0.002
    assert EncoderConfig(num_gpus=1, batch_wait_timeout_s=0.01).batch_wait_timeout_s == 0.01


def test_precision_auto_is_fp16_on_gpu_and_fp32_on_cpu():
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="encoder.precision"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="encoder.precision"):
        resolve_precision("int4", "cpu")


@pytest.mark.parametrize(
    "flags, engine, expected",
    [
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "auto", "int8"),  # Xeon, AMX era
        ({"avx2", "avx_vnni"}, "auto", "int8"),  # AVX-VNNI without AVX-512
        ({"avx2", "avx512f"}, "auto", "int8"),  # AVX-512 without VNNI: 7-bit weights
        ({"avx2", "fma"}, "auto", "int8"),  # AVX2 only: 7-bit weights
        ({"sse4_2"}, "auto", "fp32"),  # no AVX2 int8 kernels
        ({"avx2", "avx512_vnni"}, "torch", "fp32"),  # int8 needs ONNX Runtime
        ({"avx2", "avx512_vnni"}, "onnx", "int8"),
    ],
)
def test_serving_precision_auto_follows_the_cpu_flags(flags, engine, expected):
    choice = select_encoder_precision("auto", device="cpu", engine=engine, flags=frozenset(flags))
    assert choice.dtype == expected, choice.reason
    assert resolve_engine(engine, "cpu", choice.dtype) == ("torch" if engine == "torch" else "onnx")


def test_int8_weights_keep_to_seven_bits_only_without_vnni():
    assert int8_reduce_range(frozenset({"avx2", "fma"}))
    assert int8_reduce_range(frozenset({"avx2", "avx512f", "avx512bw"}))
    assert not int8_reduce_range(frozenset({"avx2", "avx512_vnni"}))
    assert not int8_reduce_range(frozenset({"avx2", "avx_vnni"}))
    reason = select_encoder_precision(
        "auto", device="cpu", engine="auto", flags=frozenset({"avx2"})
    ).reason
    assert "7-bit" in reason


def test_serving_precision_keeps_what_the_config_says_and_fp16_on_gpu():
    vnni = frozenset({"avx512_vnni"})
    for asked, device, expected in [("fp32", "cpu", "fp32"), ("auto", "cuda", "fp16")]:
        choice = select_encoder_precision(asked, device=device, engine="auto", flags=vnni)
        assert choice.dtype == expected
    with pytest.raises(ValueError, match="encoder.precision int8"):
        resolve_precision("int8", "cuda")
    with pytest.raises(ValueError, match="encoder.precision int8"):
        resolve_engine("torch", "cpu", "int8")
