"""Encoder core: the serving side of `retrieval.encoder`, without Ray."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deployments.config import EncoderConfig
from retrieval.encoder import Encoder, SentenceEncoder
from retrieval.models import resolve_encoder

__all__ = ["EncoderCore"]


class EncoderCore:
    """Encodes batches of query texts; `encoder` may be passed in (tests pass a small one)."""

    def __init__(self, config: EncoderConfig, encoder: Encoder | None = None) -> None:
        self.config = config
        self.encoder = encoder or SentenceEncoder(
            resolve_encoder(config.model),
            model_id=config.model,
            device=config.device,
            max_seq_length=config.max_seq_length,
            torch_threads=config.torch_threads,
            batch_size=config.max_batch_size,
        )
        self.dim = self.encoder.dim

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for `texts`, row i for text i (unit norm, float32)."""
        return self.encoder.encode(texts)

    def check_health(self) -> None:
        """Encode a probe sentence; raises if the model no longer answers correctly."""
        v = self.encoder.encode(["health probe"])
        if v.shape != (1, self.dim) or not np.isfinite(v).all():
            raise RuntimeError(f"encoder probe returned shape {v.shape}")
