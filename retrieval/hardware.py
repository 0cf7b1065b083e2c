"""What this machine's CPU and GPU can do, and the engine settings that follow from it.

The same code runs on CPUs with AVX-512 and native bf16 (where bf16 halves
the work), on CPUs with only AVX2 (where bf16 is emulated and float32 was
3.5x faster), and on GPUs. The choices here are pure functions of the
detected facts so that each kind of machine is covered by a unit test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BF16_CPU_FLAGS",
    "DtypeChoice",
    "INT8_CPU_FLAGS",
    "cpu_flags",
    "cpu_kind",
    "int8_reduce_range",
    "onnx_cpu_session",
    "select_encoder_precision",
    "select_llm_dtype",
    "usable_cores",
    "vllm_cpu_bind",
]

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""CPU flags (as `/proc/cpuinfo` names them) that mean native bf16 arithmetic."""

INT8_CPU_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""CPU flags that mean int8 dot-product instructions (VNNI), which ONNX Runtime's int8 matrix
products use; without them its x86 int8 kernels add pairs of products in 16 bits, which can
saturate, so the weights must keep to 7 bits (`int8_reduce_range`)."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU in `cpuinfo` (empty where the file is absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_kind(flags: frozenset[str]) -> str:
    """A short name for reports: `avx512-bf16`, `avx512`, `avx2` or `other`."""
    if flags & BF16_CPU_FLAGS:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype an engine runs in and, in words, why."""

    dtype: str
    reason: str


def select_llm_dtype(
    requested: str,
    *,
    flags: frozenset[str],
    cuda: bool,
    cuda_bf16: bool = False,
) -> DtypeChoice:
    """The vLLM dtype for `requested` (`auto` or a dtype name) on this hardware.

    `auto` picks bfloat16 on a GPU that supports it, float16 on other GPUs,
    bfloat16 on CPUs with native bf16 (`BF16_CPU_FLAGS`) and float32 on every
    other CPU, where bf16 is emulated and several times slower. An explicit
    dtype is kept as it is.
    """
    if requested != "auto":
        return DtypeChoice(requested, "set in the config")
    if cuda:
        if cuda_bf16:
            return DtypeChoice("bfloat16", "GPU with bf16 support")
        return DtypeChoice("float16", "GPU without bf16 support")
    native = sorted(flags & BF16_CPU_FLAGS)
    if native:
        return DtypeChoice("bfloat16", f"CPU has native bf16 ({', '.join(native)})")
    return DtypeChoice("float32", "CPU has no native bf16 (no avx512_bf16/amx_bf16): float32")


def select_encoder_precision(
    requested: str, *, device: str, engine: str, flags: frozenset[str]
) -> DtypeChoice:
    """The precision the serving encoder runs `requested` (`auto` or a precision) in.

    `auto` picks fp16 on a GPU; on a CPU, int8 (ONNX Runtime, int8 weights in the
    matrix products) where the CPU has VNNI (`INT8_CPU_FLAGS`) or AVX2 (there with 7-bit
    weights, `int8_reduce_range`) and the engine may be ONNX Runtime, fp32 elsewhere. An
    explicit precision is kept as it is. Only the query path uses this: `llmrec build`
    encodes the catalog at its exact precision.
    """
    if requested != "auto":
        return DtypeChoice(requested, "set in the config")
    if device == "cuda":
        return DtypeChoice("fp16", "GPU")
    if engine == "torch":
        return DtypeChoice("fp32", "encoder.engine torch: int8 runs in ONNX Runtime only")
    vnni = sorted(flags & INT8_CPU_FLAGS)
    if vnni:
        return DtypeChoice("int8", f"CPU has int8 dot products ({', '.join(vnni)})")
    if "avx2" in flags:
        return DtypeChoice("int8", "CPU has AVX2 without VNNI: int8 with 7-bit weights")
    return DtypeChoice("fp32", "CPU has neither VNNI nor AVX2 int8 kernels: fp32")


def int8_reduce_range(flags: frozenset[str]) -> bool:
    """Whether int8 weights must keep to 7 bits on a CPU with `flags`: where it has no VNNI
    (`INT8_CPU_FLAGS`), ONNX Runtime's x86 kernels sum two 8-bit products in a 16-bit lane,
    which full-range weights can overflow."""
    return not flags & INT8_CPU_FLAGS


def usable_cores() -> list[int]:
    """CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def vllm_cpu_bind(cores: str, available: list[int]) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `reranker.cpu_cores`.

    `all`: every core in `available` (`"0-1"` style ranges joined by commas);
    `vllm`: vLLM's own choice (`auto`: one thread per physical core of a NUMA
    node, less the cores it reserves for its scheduler); anything else is a
    core list such as `"2-5"` and passed through.
    """
    if cores == "vllm":
        return "auto"
    if cores != "all":
        return cores
    if not available:
        raise ValueError("no CPU cores available to bind the LLM engine to")
    ids = sorted(set(available))
    runs: list[str] = []
    start = prev = ids[0]
    for core in [*ids[1:], None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        runs.append(f"{start}-{prev}" if prev > start else str(start))
        if core is not None:
            start = prev = core
    return ",".join(runs)


def onnx_cpu_session(model: bytes, threads: int) -> Any:
    """An ONNX Runtime session on CPU over `model` (serialised ONNX) with `threads` intra-op
    threads that sleep between operators: spinning ones burn cores other processes need."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
