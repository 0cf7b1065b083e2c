"""Text encoders: the `Encoder` seam and its sentence-transformers implementation.

Shared by the offline build (`llmrec build`) and the encoder deployment, so the
catalog and the queries are embedded by exactly the same code.

`SentenceEncoder` tokenises once with the model's fast (Rust) tokenizer, pads
token ids itself and calls the sentence-transformers module stack directly on
the padded batch. That is the forward pass `SentenceTransformer.encode` makes,
minus its per-call Python tokenizer wrapper and re-sorting, so the vectors are
the same (tests hold them within 1e-5) while the serving path can count tokens
before it batches and never tokenises a text twice.

On CPU in fp32 the same module stack runs in ONNX Runtime by default (`engine`):
it is exported once at start (about a second), checked against the PyTorch
forward pass on probe texts, and measured about 2x less CPU per text than
PyTorch eager on this project's CPUs, with vectors within 1e-6 of it. In int8
the exported graph's matrix products are quantised (int8 weights per output
channel, 7-bit where the CPU has no VNNI; activations quantised on the fly)
and kept when the vectors stay within `INT8_MIN_COSINE` of PyTorch fp32's on
the probes.
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from retrieval.config import ENGINES, PRECISIONS, Engine, Precision
from retrieval.hardware import cpu_flags, int8_reduce_range, onnx_cpu_session

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "Encoder",
    "Engine",
    "Precision",
    "SentenceEncoder",
    "TokenEncoder",
    "pick_device",
    "resolve_engine",
    "resolve_precision",
]

log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-5
"""Largest difference to the PyTorch forward pass the ONNX engine may show on the probes."""
INT8_MIN_COSINE = 0.98
"""Lowest cosine to PyTorch fp32 an int8 vector may have on the probes (MiniLM: 0.99)."""


@runtime_checkable
class Encoder(Protocol):
    """Maps texts to L2-normalised float32 vectors.

    `encode(texts)` takes a non-empty sequence of strings and returns an array of
    shape `(len(texts), dim)`, row i the vector of text i, unit norm, so inner
    product is cosine similarity. `dim` and `model_id` describe the space; two
    encoders with the same `model_id` produce comparable vectors.
    """

    dim: int
    model_id: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class TokenEncoder(Encoder, Protocol):
    """An `Encoder` whose tokenisation and forward pass can be called apart.

    `tokenize(texts)` returns one list of token ids per text (special tokens
    included, truncated to the model's limit, never padded). `encode_ids(ids)`
    pads them into one batch and returns the same vectors `encode` would for
    the texts they came from, row i for `ids[i]`. `cache_key(text)` is a
    normalised form of `text`: two texts with the same key get the same vector.
    """

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray: ...

    def cache_key(self, text: str) -> str: ...


def pick_device(device: str) -> str:
    """`auto` becomes `cuda` when torch sees a GPU, else `cpu`."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str) -> str:
    """The precision to run on `device` (`cpu` or `cuda`).

    `auto` is fp16 on CUDA and fp32 on CPU. fp16 is refused on CPU (slower than
    fp32 there; bf16 is the CPU fast path) with a `ValueError` that names the
    setting to change.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"encoder.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "fp16" if device == "cuda" else "fp32"
    if device == "cpu" and precision == "fp16":
        raise ValueError("encoder.precision fp16 needs a GPU; on CPU use fp32, bf16 or int8")
    if device == "cuda" and precision == "int8":
        raise ValueError("encoder.precision int8 runs on CPU; on a GPU use fp16")
    return precision


def resolve_engine(engine: str, device: str, precision: str) -> str:
    """`auto` is ONNX Runtime for fp32 on CPU (when installed), PyTorch otherwise.

    int8 runs in ONNX Runtime only. An explicit `onnx` elsewhere (CUDA, fp16 or bf16)
    raises `ValueError`, as does int8 with `torch`.
    """
    if engine not in ENGINES:
        raise ValueError(f"encoder.engine must be one of {ENGINES}, got {engine!r}")
    onnx_fits = device == "cpu" and precision in ("fp32", "int8")
    if engine == "onnx" and not onnx_fits:
        raise ValueError("encoder.engine onnx runs fp32 or int8 on CPU; use engine torch here")
    if precision == "int8":
        if engine == "torch":
            raise ValueError("encoder.precision int8 runs in ONNX Runtime; use engine auto or onnx")
        return "onnx"
    if engine == "auto":
        if not onnx_fits:
            return "torch"
        try:
            import onnx  # noqa: F401  (the exporter needs it)
            import onnxruntime  # noqa: F401
        except ImportError:
            return "torch"
        return "onnx"
    return engine


class SentenceEncoder:
    """A sentence-transformers model (pooling and normalisation as the model defines).

    `model_path` is a local folder or a Hugging Face id; `model_id` is what the
    index manifest records (defaults to the folder/id name). `precision` (see
    `resolve_precision`): fp16/bf16 cast the weights on CUDA; on CPU, bf16 runs
    the forward pass under bf16 autocast, faster and slightly less exact than
    fp32 (`llmrec bench encoder` reports its cosine to fp32). `engine` (see
    `resolve_engine`) picks ONNX Runtime or PyTorch for the forward pass; an ONNX
    export that disagrees with PyTorch on the probes falls back to PyTorch
    under `auto` and raises `RuntimeError` when `onnx` was asked for. `int8_7bit`
    keeps int8 weights to 7 bits (None: where this CPU has no VNNI,
    `hardware.int8_reduce_range`). `encode` sorts by length and runs chunks of
    `batch_size` texts.
    """

    def __init__(
        self,
        model_path: str,
        *,
        model_id: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        engine: str = "auto",
        max_seq_length: int = 256,
        torch_threads: int | None = None,
        batch_size: int = 64,
        int8_7bit: bool | None = None,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = SentenceTransformer(model_path, device=self.device)
        self.model.max_seq_length = max_seq_length
        self.model.eval()
        self._autocast: Any = None
        if self.precision == "fp16":
            self.model.half()
        elif self.precision == "bf16" and self.device == "cuda":
            self.model.to(torch.bfloat16)
        elif self.precision == "bf16":
            self._autocast = torch.bfloat16
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.model_id = model_id or model_path.rstrip("/").split("/")[-1]
        dim_of = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dim_of())
        self._setup_tokenizer()
        self.engine = resolve_engine(engine, self.device, self.precision)
        self._session: Any = None
        # Full-range int8 weights overflow the 16-bit sums of CPUs without VNNI.
        self.int8_7bit = int8_reduce_range(cpu_flags()) if int8_7bit is None else int8_7bit
        if self.engine == "onnx":
            self._setup_onnx(torch_threads or torch.get_num_threads(), strict=engine == "onnx")

    def _setup_onnx(self, threads: int, *, strict: bool) -> None:
        """Export the module stack to ONNX in memory and load it; keep it only if it agrees."""
        import torch

        names = ["input_ids", "attention_mask"]
        if self._with_type_ids:
            names.append("token_type_ids")
        probe = self._pad(self.tokenize(["an onnx export probe", "x"]))
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(
                _normalised_stack(self.model, names).eval(),
                tuple(torch.from_numpy(probe[n]) for n in names),
                buffer,
                input_names=names,
                output_names=["embedding"],
                dynamic_axes={
                    **{n: {0: "batch", 1: "tokens"} for n in names},
                    "embedding": {0: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
        probes = self.tokenize(
            ["short", "a longer probe sentence about a chef far from home", "word " * 300]
        )
        torch_out = self.encode_ids(probes)
        exported = buffer.getvalue()
        tried = []
        for precision in ("int8", "fp32") if self.precision == "int8" else ("fp32",):
            model = _quantized_int8(exported, self.int8_7bit) if precision == "int8" else exported
            session = onnx_cpu_session(model, threads)
            self._session = session
            onnx_out = self.encode_ids(probes)
            self._session = None
            if precision == "int8":
                cosine = float((onnx_out * torch_out).sum(axis=1).min())
                agrees, seen = cosine >= INT8_MIN_COSINE, f"int8 cosine {cosine:.4f} to fp32"
            else:
                gap = float(abs(onnx_out - torch_out).max())
                agrees, seen = gap <= ONNX_TOLERANCE, f"fp32 differs by {gap:.2e}"
            if agrees:
                self._session, self.precision = session, precision
                return
            tried.append(seen)
            log.warning("%s: ONNX %s on the probes; not used", self.model_id, seen)
        if strict:
            raise RuntimeError(f"{self.model_id}: ONNX export rejected ({'; '.join(tried)})")
        log.warning("%s: using PyTorch fp32", self.model_id)
        self.engine, self.precision = "torch", "fp32"

    def _setup_tokenizer(self) -> None:
        hf = self.model.tokenizer
        if not getattr(hf, "is_fast", False) or getattr(hf, "backend_tokenizer", None) is None:
            raise ValueError(f"{self.model_id}: a fast (Rust) tokenizer is required")
        # A private copy: truncation set for serving, padding done by `encode_ids`.
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        backend.no_padding()
        backend.enable_truncation(max_length=min(self.max_seq_length, hf.model_max_length))
        self._backend = backend
        self._normalizer = backend.normalizer
        self._pad_id = int(hf.pad_token_id or 0)
        self._with_type_ids = "token_type_ids" in hf.model_input_names

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text: special tokens added, truncated, unpadded."""
        return [e.ids for e in self._backend.encode_batch(list(texts))]

    def cache_key(self, text: str) -> str:
        """The model's own text normalisation (e.g. lower-casing) with whitespace collapsed."""
        norm = self._normalizer.normalize_str(text) if self._normalizer is not None else text
        return " ".join(norm.split())

    def _pad(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Right-padded int64 `input_ids`, `attention_mask` (and zero `token_type_ids`)."""
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        arrays = {"input_ids": input_ids, "attention_mask": mask}
        if self._with_type_ids:
            arrays["token_type_ids"] = np.zeros_like(input_ids)
        return arrays

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Vectors for token-id lists padded into one forward pass, row i for `ids[i]`."""
        import torch

        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        arrays = self._pad(ids)
        if self._session is not None:
            (out,) = self._session.run(None, arrays)
            return np.ascontiguousarray(out, dtype=np.float32)
        features = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
        with torch.inference_mode():
            if self._autocast is not None:
                with torch.autocast("cpu", dtype=self._autocast):
                    out = self.model(features)["sentence_embedding"]
            else:
                out = self.model(features)["sentence_embedding"]
            out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
        return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenize(texts)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self.encode_ids([ids[i] for i in chunk])
        return out


def _quantized_int8(model: bytes, seven_bit: bool) -> bytes:
    """The ONNX `model` with its matrix products in int8: weights per output channel (in 7
    bits with `seven_bit`), activations quantised at run time (ONNX Runtime's dynamic
    quantisation)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(model)
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=seven_bit,
            op_types_to_quantize=["MatMul"],
        )
        return target.read_bytes()


def _normalised_stack(model: Any, names: list[str]) -> Any:
    """What ONNX export traces: the sentence-transformers stack on positional inputs, then L2."""
    import torch

    class NormalisedStack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            out = self.model(dict(zip(names, inputs, strict=True)))["sentence_embedding"]
            return torch.nn.functional.normalize(out, p=2, dim=1)

    return NormalisedStack()
