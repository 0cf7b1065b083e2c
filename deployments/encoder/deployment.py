"""The Encoder Serve deployment: dynamic batching around `EncoderCore`."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from deployments.config import EncoderConfig
from deployments.encoder.core import EncoderCore

__all__ = ["Encoder"]


@serve.deployment
class Encoder:
    """Callers send one text each; `serve.batch` groups concurrent calls into one forward pass."""

    def __init__(self, config: dict) -> None:
        cfg = EncoderConfig.model_validate(config)
        self.core = EncoderCore(cfg)
        self.encode.set_max_batch_size(cfg.max_batch_size)
        self.encode.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def encode(self, texts: list[str]) -> list[np.ndarray]:
        # The forward pass runs off the event loop so the next batch can assemble meanwhile.
        vectors = await asyncio.to_thread(self.core.encode_batch, texts)
        return list(vectors)

    async def dim(self) -> int:
        return self.core.dim

    async def check_health(self) -> None:
        await asyncio.to_thread(self.core.check_health)
