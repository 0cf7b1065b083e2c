"""EncoderCore without Ray: the query cache, request coalescing, stats, and the HTTP shape."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from deployments.encoder.core import EmbeddingCache, EncoderCore
from deployments.encoder.http import MAX_INPUTS, embeddings_body, parse_embeddings_request
from deployments.errors import InvalidInput, PayloadTooLarge
from retrieval.config import EncoderConfig


class TokenizerOnlyEncoder:
    """A `TokenEncoder` with MiniLM's real tokenizer and a tiny deterministic 'model'."""

    dim = 4
    model_id = "fake"

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        from retrieval.models import resolve_encoder

        folder = Path(resolve_encoder("all-MiniLM-L6-v2"))
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.no_padding()
        self.forwarded: list[list[int]] = []

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts))]

    def cache_key(self, text: str) -> str:
        return " ".join(self.tok.normalizer.normalize_str(text).split())

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        self.forwarded.extend(list(x) for x in ids)
        rows = [np.array([len(x), sum(x), x[1], x[-2]], np.float32) for x in ids]
        return np.stack([r / np.linalg.norm(r) for r in rows])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_ids(self.tokenize(texts))


def make_core(**overrides) -> tuple[EncoderCore, TokenizerOnlyEncoder]:
    fake = TokenizerOnlyEncoder()
    config = EncoderConfig(batch_wait_timeout_s=0.001, **overrides)
    return EncoderCore(config, encoder=fake), fake


async def test_repeated_query_is_answered_from_the_cache():
    core, fake = make_core()
    first = await core.encode("a slow-burn space drama")
    again = await core.encode("a slow-burn space drama")
    np.testing.assert_array_equal(first, again)
    assert len(fake.forwarded) == 1
    stats = core.stats()
    assert (stats["cache_hits"], stats["cache_misses"], stats["cache_hit_rate"]) == (1, 1, 0.5)
    await core.close()


async def test_cache_key_is_the_normalised_text():
    core, fake = make_core()
    await core.encode("Slow-Burn   Space DRAMA ")
    await core.encode("slow-burn space drama")
    assert len(fake.forwarded) == 1
    other = await core.encode("a cooking show")
    assert len(fake.forwarded) == 2
    assert not np.allclose(other, await core.encode("slow-burn space drama"))
    await core.close()


async def test_cached_vector_equals_the_computed_one():
    core, fake = make_core()
    texts = ["western outlaw", "kitchen recipes", "galaxy far away"]
    computed = [await core.encode(t) for t in texts]
    cached = [await core.encode(t) for t in texts]
    for a, b, t in zip(computed, cached, texts, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, fake.encode([t])[0], atol=1e-6)
    await core.close()


async def test_concurrent_requests_for_one_text_share_one_computation():
    core, fake = make_core()
    answers = await asyncio.gather(*(core.encode("the same question") for _ in range(20)))
    assert len(fake.forwarded) == 1
    for a in answers:
        np.testing.assert_array_equal(a, answers[0])
    assert core.stats()["cache_hits"] == 19
    await core.close()


async def test_disabled_cache_computes_every_time():
    core, fake = make_core(cache_size=0)
    for _ in range(3):
        await core.encode("no memory")
    assert len(fake.forwarded) == 3
    assert core.stats()["cache_hit_rate"] == 0.0
    await core.close()


async def test_invalid_text_is_refused():
    core, _ = make_core()
    for bad in ("", "   ", None, 3):
        with pytest.raises(InvalidInput):
            await core.encode(bad)
    await core.close()


async def test_encode_many_keeps_input_order():
    core, fake = make_core()
    texts = ["b text here", "a", "a much longer text with many more tokens in it", "b text here"]
    vectors = await core.encode_many(texts)
    np.testing.assert_allclose(vectors, fake.encode(texts), atol=1e-6)
    await core.close()


async def test_health_probe_bypasses_the_cache():
    core, fake = make_core()
    await core.check_health()
    await core.check_health()
    assert len(fake.forwarded) == 2
    assert core.stats()["cache_entries"] == 0
    await core.close()


def test_lru_evicts_the_least_recently_used():
    cache = EmbeddingCache(2)
    a, b, c = (np.full(2, i, np.float32) for i in range(3))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # "a" is now the most recent
    cache.put("c", c)
    assert cache.get("b") is None
    assert cache.get("a") is a and cache.get("c") is c
    assert len(cache) == 2


def test_zero_sized_cache_stores_nothing():
    cache = EmbeddingCache(0)
    cache.put("a", np.zeros(2, np.float32))
    assert cache.get("a") is None and len(cache) == 0


# ---- HTTP shape ------------------------------------------------------------------


def test_embeddings_request_accepts_a_string_or_a_list():
    assert parse_embeddings_request(b'{"input": "hi"}').texts == ["hi"]
    req = parse_embeddings_request(
        b'{"input": ["a", "b"], "model": "m", "encoding_format": "base64"}'
    )
    assert (req.texts, req.encoding_format) == (["a", "b"], "base64")


@pytest.mark.parametrize(
    "body, field",
    [
        (b"not json", None),
        (b'{"input": []}', "input"),
        (b'{"input": ["ok", ""]}', "input.1"),
        (b'{"input": "x", "encoding_format": "hex"}', "encoding_format"),
        (b'{"input": "x", "temperature": 1}', "temperature"),
    ],
)
def test_bad_embeddings_requests_name_the_field(body, field):
    with pytest.raises(InvalidInput) as err:
        parse_embeddings_request(body)
    assert err.value.status == 422 and err.value.field == field


def test_too_many_inputs_is_413():
    with pytest.raises(PayloadTooLarge):
        parse_embeddings_request(json.dumps({"input": ["x"] * (MAX_INPUTS + 1)}).encode())


def test_embeddings_body_round_trips_in_both_formats():
    vectors = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    as_float = json.loads(embeddings_body(vectors, "float", "m"))
    np.testing.assert_allclose([d["embedding"] for d in as_float["data"]], vectors, rtol=1e-6)
    as_b64 = json.loads(embeddings_body(vectors, "base64", "m"))
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in as_b64["data"]]
    np.testing.assert_array_equal(np.stack(decoded), vectors)
    assert [d["index"] for d in as_b64["data"]] == [0, 1] and as_b64["model"] == "m"
