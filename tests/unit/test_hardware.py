"""Engine settings picked from the detected hardware, for each kind of CPU and GPU."""

from __future__ import annotations

import pytest

from retrieval.hardware import cpu_flags, cpu_kind, select_llm_dtype, vllm_cpu_bind

AVX2_EPYC = frozenset(["fpu", "sse2", "ssse3", "fma", "avx", "avx2", "bmi2"])
AVX512_NO_BF16 = AVX2_EPYC | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
AVX512_BF16 = AVX512_NO_BF16 | {"avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_NO_BF16 | {"amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize(
    ("flags", "dtype", "kind"),
    [
        (AVX2_EPYC, "float32", "avx2"),
        (AVX512_NO_BF16, "float32", "avx512"),
        (AVX512_BF16, "bfloat16", "avx512-bf16"),
        (SAPPHIRE_RAPIDS, "bfloat16", "avx512-bf16"),
        (frozenset(), "float32", "other"),
    ],
)
def test_auto_dtype_on_each_kind_of_cpu(flags, dtype, kind):
    choice = select_llm_dtype("auto", flags=flags, cuda=False)
    assert choice.dtype == dtype and cpu_kind(flags) == kind
    assert choice.reason.startswith("CPU has native bf16") == (dtype == "bfloat16")


def test_auto_dtype_on_gpus_ignores_the_host_cpu():
    assert select_llm_dtype("auto", flags=AVX2_EPYC, cuda=True, cuda_bf16=True).dtype == "bfloat16"
    assert select_llm_dtype("auto", flags=AVX512_BF16, cuda=True).dtype == "float16"


def test_an_explicit_dtype_is_kept_even_where_it_is_slow():
    choice = select_llm_dtype("bfloat16", flags=AVX2_EPYC, cuda=False)
    assert choice.dtype == "bfloat16" and choice.reason == "set in the config"


def test_cpu_flags_read_the_first_cpu_of_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 fma avx512f\n"
    )
    assert cpu_flags(info) == {"fpu", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_the_engine_binds_every_core_it_may_use_unless_told_otherwise():
    assert vllm_cpu_bind("all", [0, 1]) == "0-1"
    assert vllm_cpu_bind("all", [3, 0, 1, 5, 6, 7]) == "0-1,3,5-7"
    assert vllm_cpu_bind("all", [4]) == "4"
    assert vllm_cpu_bind("vllm", [0, 1]) == "auto"
    assert vllm_cpu_bind("2-5", [0, 1]) == "2-5"
    with pytest.raises(ValueError):
        vllm_cpu_bind("all", [])
