"""Small data the tests make: catalogs, vectors, shard folders; a scripted LLM engine."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from deployments.reranker.engine import EngineFailed, EngineOutput
from retrieval.shards import build_shards

CATEGORIES = ["Drama", "Comedy", "Horror", "Western"]


def make_catalog(n: int, categories: list[str] = CATEGORIES) -> pa.Table:
    ids = [str(i + 1) for i in range(n)]
    cats = [[categories[i % len(categories)]] for i in range(n)]
    return pa.table(
        {
            "item_id": ids,
            "title": [f"Item {i}" for i in ids],
            "text": [f"A {c[0].lower()} story number {i}." for i, c in zip(ids, cats, strict=True)],
            "categories": cats,
        }
    )


def make_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_shards(path: Path, n: int, dim: int, n_shards: int, seed: int = 0):
    """Write an index folder; returns (catalog, vectors, manifest)."""
    catalog = make_catalog(n)
    vectors = make_vectors(n, dim, seed)
    manifest = build_shards(catalog, vectors, path, n_shards=n_shards, encoder_id="test")
    return catalog, vectors, manifest


class ScriptedEngine:
    """Letter logprobs from a fixed table, explanations from a function, costs from a clock.

    A prompt costs `seconds_per_token` per word it holds (its "tokens"); a
    generation also `seconds_per_step` per token asked for. Calls in flight are
    counted, and a cancelled call counts as aborted.
    """

    def __init__(
        self,
        logprobs=None,
        reply=lambda messages: " it is a great sci-fi film.",
        fail=None,
        seconds_per_token=0.0,
        seconds_per_step=0.0,
    ):
        self.logprobs = logprobs if logprobs is not None else {" A": -0.1}
        self.reply = reply
        self.fail = fail
        self.seconds_per_token = seconds_per_token
        self.seconds_per_step = seconds_per_step
        self.prompts: list[list[dict[str, str]]] = []
        self.batches: list[int] = []
        self.max_tokens: list[int] = []
        self.steered: list = []  # the `steer` argument of each generate call
        self.in_flight = 0
        self.aborted = 0
        self.closed = False

    def count_tokens(self, messages):
        return sum(len(m["content"].split()) for m in messages)

    async def _run(self, messages, seconds):
        self.prompts.append(messages)
        self.in_flight += 1
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.aborted += 1
            raise
        finally:
            self.in_flight -= 1
        if self.fail:
            raise self.fail(messages)

    async def score(self, messages):
        await self._run(messages, self.count_tokens(messages) * self.seconds_per_token)
        tokens = self.count_tokens(messages)
        return EngineOutput(logprobs=dict(self.logprobs), prompt_tokens=tokens, output_tokens=1)

    async def generate(
        self, batch, max_tokens, temperature=0.0, seed=None, steer=None, stop_at=None
    ):
        """Each reply takes its prompt and `max_tokens` steps; stopped at `stop_at`, the
        replies have written the share of their words that the time allowed."""
        self.batches.append(len(batch))
        self.steered.append(steer)
        self.max_tokens.append(max_tokens)
        cost = max_tokens * self.seconds_per_step
        seconds = [self.count_tokens(m) * self.seconds_per_token + cost for m in batch]
        allowed = seconds if stop_at is None else [stop_at - time.time()] * len(batch)
        waits = [max(min(s, a), 0.0) for s, a in zip(seconds, allowed, strict=True)]
        await asyncio.gather(*(self._run(m, w) for m, w in zip(batch, waits, strict=True)))
        outs = []
        for m, need, waited in zip(batch, seconds, waits, strict=True):
            words = self.reply(m).split(" ")
            done = 1.0 if waited >= need else max(waited - (need - cost), 0.0) / max(cost, 1e-9)
            outs.append(
                EngineOutput(
                    text=" ".join(words[: int(len(words) * done)]),
                    prompt_tokens=self.count_tokens(m),
                    cached_tokens=self.count_tokens(m) // 2,
                    output_tokens=int(max_tokens * done),
                    finished=done >= 1.0,
                )
            )
        return outs

    def running(self):
        return self.in_flight

    def check_alive(self):
        if self.closed:
            raise EngineFailed("the engine is shut down")

    def describe(self):
        return {"dtype": "float32", "dtype_reason": "scripted"}

    def shutdown(self):
        self.closed = True


def s3_bucket_uri(endpoint: str, prefix: str = "datasets/demo") -> str:
    """A fresh bucket on the server at `endpoint`; the URI of `prefix` inside it."""
    import uuid

    import pyarrow.fs as pafs

    bucket = f"llmrec-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", allow_bucket_creation=True
    ).create_dir(bucket)
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http"


def dummy_aws(mp) -> None:
    """Dummy AWS keys and no instance-metadata lookup (`mp`: a pytest MonkeyPatch): S3 calls
    reach only a local server, and `ray start` passes them on to every replica."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        mp.setenv(name, value)
