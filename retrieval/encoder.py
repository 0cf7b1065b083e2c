"""Text encoders: the `Encoder` seam and its sentence-transformers implementation.

Shared by the offline build (`llmrec build`) and the encoder deployment, so the
catalog and the queries are embedded by exactly the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Encoder", "SentenceEncoder", "pick_device"]


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


def pick_device(device: str) -> str:
    """`auto` becomes `cuda` when torch sees a GPU, else `cpu`."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceEncoder:
    """A sentence-transformers model (mean pooling + normalisation as the model defines).

    `model_path` is a local folder or a Hugging Face id; `model_id` is what the
    index manifest records (defaults to the folder/id name). On CUDA the weights
    run in fp16.
    """

    def __init__(
        self,
        model_path: str,
        *,
        model_id: str | None = None,
        device: str = "auto",
        max_seq_length: int = 256,
        torch_threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = pick_device(device)
        self.model = SentenceTransformer(model_path, device=self.device)
        if self.device == "cuda":
            self.model.half()
        self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.model_id = model_id or model_path.rstrip("/").split("/")[-1]
        dim_of = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dim_of())

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
