"""Encoder core: the serving side of `retrieval.encoder`, without Ray.

One text in, one vector out: `encode(text)` looks the text up in an LRU cache
keyed by its normalised form, tokenises a miss once and hands the token ids to
a `TokenBatcher`, which runs them with other callers' in forward passes
bounded by a token budget. Concurrent requests for the same text share one
computation. `stats()` reports cache and batching counters.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from deployments.encoder.batching import BatchPolicy, TokenBatcher
from deployments.errors import InvalidInput
from retrieval.config import EncoderConfig
from retrieval.encoder import SentenceEncoder, TokenEncoder, pick_device
from retrieval.hardware import cpu_flags, int8_reduce_range, select_encoder_precision
from retrieval.models import resolve_encoder

__all__ = ["EmbeddingCache", "EncoderCore", "batch_policy"]

HEALTH_PROBE = "health probe"

log = logging.getLogger(__name__)


class EmbeddingCache:
    """A bounded LRU map from normalised text to its (read-only) vector; size 0 disables it."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> np.ndarray | None:
        vector = self._items.get(key)
        if vector is not None:
            self._items.move_to_end(key)
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        if self.max_entries <= 0:
            return
        self._items[key] = vector
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


def batch_policy(config: EncoderConfig) -> BatchPolicy:
    """The `BatchPolicy` of an `EncoderConfig`."""
    # Both filled in by EncoderConfig validation.
    assert config.max_batch_tokens is not None and config.batch_wait_timeout_s is not None
    return BatchPolicy(
        max_batch_tokens=config.max_batch_tokens,
        max_batch_size=config.max_batch_size,
        batch_wait_timeout_s=config.batch_wait_timeout_s,
        pass_cost_tokens=config.pass_cost_tokens,
    )


class EncoderCore:
    """Cached, dynamically batched query encoding; `encoder` may be passed in (tests do).

    `encode(text)` must be awaited on one event loop (the replica's); it
    returns the unit-norm float32 vector of `text` and raises `InvalidInput`
    for a non-string or empty text. `encode_batch(texts)` is the synchronous
    bulk path (no cache, no queue). `close()` stops the batching worker.
    """

    def __init__(self, config: EncoderConfig, encoder: TokenEncoder | None = None) -> None:
        self.config = config
        flags = cpu_flags()
        self.precision_choice = select_encoder_precision(
            config.precision, device=pick_device(config.device), engine=config.engine, flags=flags
        )
        self.encoder: TokenEncoder = encoder or SentenceEncoder(
            resolve_encoder(config.model),
            model_id=config.model,
            device=config.device,
            precision=self.precision_choice.dtype,
            engine=config.engine,
            max_seq_length=config.max_seq_length,
            torch_threads=config.torch_threads,
            batch_size=config.max_batch_size,
            int8_7bit=int8_reduce_range(flags),
        )
        log.info(
            "encoder %s: %s on %s (asked %s: %s)",
            config.model,
            getattr(self.encoder, "precision", "?"),
            getattr(self.encoder, "engine", "?"),
            config.precision,
            self.precision_choice.reason,
        )
        self.dim = self.encoder.dim
        self.cache = EmbeddingCache(config.cache_size)
        self.batcher = TokenBatcher(self.encoder.encode_ids, batch_policy(config))
        self._inflight: dict[str, asyncio.Future[np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    async def encode(self, text: str) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("text to encode must be a non-empty string", field="text")
        if self.config.cache_size <= 0:
            self.misses += 1
            return await self.batcher.submit(self.encoder.tokenize([text])[0])
        key = self.encoder.cache_key(text)
        cached = self.cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        shared = self._inflight.get(key)
        if shared is not None:
            self.hits += 1
            return await asyncio.shield(shared)
        self.misses += 1
        task = asyncio.ensure_future(self._compute(key, text))
        self._inflight[key] = task
        return await asyncio.shield(task)

    async def _compute(self, key: str, text: str) -> np.ndarray:
        try:
            vector = await self.batcher.submit(self.encoder.tokenize([text])[0])
            self.cache.put(key, vector)
            return vector
        finally:
            self._inflight.pop(key, None)

    async def encode_many(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for several texts, row i for text i; each text batches like a single call."""
        vectors = await asyncio.gather(*(self.encode(t) for t in texts))
        return np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for `texts`, row i for text i (unit norm, float32), computed now."""
        return self.encoder.encode(texts)

    async def check_health(self) -> None:
        """Encode a probe through the batch queue (not the cache); raises if the answer is wrong."""
        vector = await self.batcher.submit(self.encoder.tokenize([HEALTH_PROBE])[0])
        if vector.shape != (self.dim,) or not np.isfinite(vector).all():
            raise RuntimeError(f"encoder probe returned shape {vector.shape}")

    def stats(self) -> dict[str, Any]:
        """Cache and batching counters since start, with the derived rates."""
        b = self.batcher.stats
        lookups = self.hits + self.misses
        return {
            # What the forward pass runs in (int8 may have fallen back to fp32 at load).
            "precision": getattr(self.encoder, "precision", self.precision_choice.dtype),
            "engine": getattr(self.encoder, "engine", None),
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "cache_hit_rate": self.hits / lookups if lookups else 0.0,
            "cache_entries": len(self.cache),
            "queued": self.batcher.queued,
            "mean_batch_size": b.requests / b.batches if b.batches else 0.0,
            "padding_ratio": b.padded_tokens / b.tokens if b.tokens else 1.0,
            **asdict(b),
        }

    async def close(self) -> None:
        await self.batcher.close()
