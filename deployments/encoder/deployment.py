"""The Encoder Serve deployment: a thin wrapper around `EncoderCore`.

Handle callers (the router) send one text to `encode` and get its vector; the
core batches concurrent calls by a token budget. The same replica answers HTTP
(`POST` with the OpenAI-style body of `deployments.encoder.http`) when the
deployment is an application's ingress, which is how `llmrec bench encoder`
serves it. Cache and batching counters go to Ray's metrics endpoint
(`llmrec_encoder_*`) and are returned by `stats()`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve import metrics
from starlette.requests import Request
from starlette.responses import Response

from deployments.encoder.core import EncoderCore
from deployments.encoder.http import embeddings_body, parse_embeddings_request
from deployments.errors import LlmrecError
from deployments.logs import replica_logging
from retrieval.config import EncoderConfig

__all__ = ["Encoder"]

METRICS_INTERVAL_S = 2.0


class _Metrics:
    """Publishes the core's counters to `ray.serve.metrics` (deltas, every few seconds)."""

    COUNTERS = {
        "cache_hits": "Query vectors answered from the LRU cache (or a concurrent request).",
        "cache_misses": "Query vectors that needed a forward pass.",
        "batches": "Batches taken from the queue.",
        "passes": "Forward passes (a batch is split into passes of similar length).",
        "requests": "Texts encoded by forward passes.",
        "tokens": "Real tokens encoded.",
        "padded_tokens": "Tokens including padding.",
    }
    GAUGES = {
        "cache_hit_rate": "Share of lookups answered without a forward pass, since start.",
        "mean_batch_size": "Mean texts per batch, since start.",
        "padding_ratio": "Padded tokens per real token, since start.",
        "queued": "Texts waiting for a batch.",
    }

    def __init__(self) -> None:
        self.counters = {
            k: metrics.Counter(f"llmrec_encoder_{k}", description=d)
            for k, d in self.COUNTERS.items()
        }
        self.gauges = {
            k: metrics.Gauge(f"llmrec_encoder_{k}", description=d) for k, d in self.GAUGES.items()
        }
        self.last: dict[str, float] = dict.fromkeys(self.COUNTERS, 0)

    def publish(self, stats: dict[str, Any]) -> None:
        for key, counter in self.counters.items():
            delta = stats[key] - self.last[key]
            if delta > 0:
                counter.inc(delta)
            self.last[key] = stats[key]
        for key, gauge in self.gauges.items():
            gauge.set(float(stats[key]))


@serve.deployment
class Encoder:
    """One text per `encode` call, batched by tokens; also an HTTP embeddings endpoint."""

    def __init__(self, config: dict) -> None:
        replica_logging()
        self.config = EncoderConfig.model_validate(config)
        self.core = EncoderCore(self.config)
        self._metrics = _Metrics()
        self._publisher: asyncio.Task[None] | None = None

    def _start_publisher(self) -> None:
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(self._publish_forever())

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            self._metrics.publish(self.core.stats())

    async def encode(self, text: str) -> np.ndarray:
        self._start_publisher()
        return await self.core.encode(text)

    async def __call__(self, request: Request) -> Response:
        self._start_publisher()
        started = time.perf_counter()
        try:
            req = parse_embeddings_request(await request.body())
            if len(req.texts) == 1:
                vectors = (await self.core.encode(req.texts[0]))[None, :]
            else:
                vectors = await self.core.encode_many(req.texts)
        except LlmrecError as exc:
            return _json(exc.status, exc.to_json())
        body = embeddings_body(vectors, req.encoding_format, self.config.model)
        timing = f"encode;dur={(time.perf_counter() - started) * 1e3:.1f}"
        return Response(body, media_type="application/json", headers={"Server-Timing": timing})

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()

    async def dim(self) -> int:
        return self.core.dim

    async def check_health(self) -> None:
        await self.core.check_health()


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json")
