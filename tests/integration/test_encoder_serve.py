"""The encoder pool on real Ray Serve: batched answers equal one-by-one encoding (handle, HTTP)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from ray import serve

from deployments.encoder.deployment import Encoder
from retrieval.config import EncoderConfig

APP = "encoder-under-test"
ROUTE = "/encoder-under-test"

TEXTS = [
    f"{subject} {what} {where}"
    for subject in ("an astronaut", "a chef", "two cowboys", "a detective")
    for what in ("learns to trust", "hunts for", "cooks a feast for", "writes letters to")
    for where in ("a rival", "an old friend far from home in a city that never sleeps", "us")
]


def test_direct_forward_pass_equals_sentence_transformers(minilm):
    texts = [*TEXTS, "Héllo   WORLD ", "word " * 400, "日本語のテキスト"]
    reference = minilm.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(minilm.encode(texts), reference, atol=1e-5)


@pytest.fixture(scope="module")
def encoder_app(ray_cluster):
    # fp32: the vectors must equal sentence-transformers' (int8 has its own test).
    config = EncoderConfig(
        num_cpus=0.2, torch_threads=1, batch_wait_timeout_s=0.01, cache_size=64, precision="fp32"
    )
    app = Encoder.options(name="EncoderUnderTest", **config.deployment_options()).bind(
        config.model_dump()
    )
    handle = serve.run(app, name=APP, route_prefix=ROUTE)
    yield handle, f"{ray_cluster}{ROUTE}"
    serve.delete(APP)


def test_concurrent_callers_get_the_vectors_of_one_by_one_encoding(encoder_app, minilm):
    handle, _ = encoder_app
    one_by_one = np.stack(
        [minilm.model.encode([t], normalize_embeddings=True)[0] for t in TEXTS]
    )  # sentence-transformers itself, one text per call
    responses = [handle.encode.remote(t) for t in TEXTS]  # all in flight at once
    batched = np.stack([r.result(timeout_s=120) for r in responses])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["mean_batch_size"] > 1, stats
    assert stats["padded_tokens"] <= stats["batches"] * EncoderConfig().max_batch_tokens


def test_repeated_queries_hit_the_cache(encoder_app, minilm):
    handle, _ = encoder_app
    before = handle.stats.remote().result(timeout_s=30)
    vector = handle.encode.remote("a quiet western about a retired sheriff").result(timeout_s=60)
    again = handle.encode.remote("A quiet western about a retired SHERIFF").result(timeout_s=60)
    np.testing.assert_array_equal(vector, again)
    after = handle.stats.remote().result(timeout_s=30)
    assert after["cache_hits"] == before["cache_hits"] + 1
    assert 0 < after["cache_hit_rate"] <= 1


def test_http_embeddings_match_in_both_encodings(encoder_app, minilm):
    _, url = encoder_app
    texts = TEXTS[:5]
    expected = minilm.encode(texts)
    with httpx.Client(timeout=60) as client:
        as_float = client.post(url, json={"input": texts})
        as_b64 = client.post(url, json={"input": texts[0], "encoding_format": "base64"})
        bad = client.post(url, json={"input": []})
    assert as_float.status_code == 200, as_float.text
    got = np.array([d["embedding"] for d in as_float.json()["data"]], np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    row = np.frombuffer(base64.b64decode(as_b64.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(row, expected[0], atol=1e-5)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "input"


def test_int8_vectors_stay_close_to_fp32_and_a_bad_export_falls_back(minilm, monkeypatch):
    from retrieval import encoder as encoder_module
    from retrieval.encoder import INT8_MIN_COSINE, SentenceEncoder
    from retrieval.models import resolve_encoder

    path = resolve_encoder("all-MiniLM-L6-v2")
    texts = [*TEXTS, "word " * 400]
    exact = minilm.encode(texts)
    # This CPU's choice (7-bit weights where it has no VNNI), and 7-bit weights on any CPU.
    for seven_bit in (None, True):
        int8 = SentenceEncoder(path, precision="int8", torch_threads=1, int8_7bit=seven_bit)
        assert (int8.engine, int8.precision) == ("onnx", "int8"), seven_bit
        quantised = int8.encode(texts)
        cosines = (exact * quantised).sum(axis=1)
        assert cosines.min() >= INT8_MIN_COSINE
        assert np.abs(exact - quantised).max() > 1e-3  # really another forward pass
        np.testing.assert_allclose(np.linalg.norm(quantised, axis=1), 1.0, atol=1e-5)
    # An int8 graph that strays past the bound is not served: fp32 in ONNX Runtime instead.
    monkeypatch.setattr(encoder_module, "INT8_MIN_COSINE", 1.01)
    fallback = SentenceEncoder(path, precision="int8", torch_threads=1)
    assert (fallback.engine, fallback.precision) == ("onnx", "fp32")
    np.testing.assert_allclose(fallback.encode(texts), exact, atol=1e-5)


def test_health_probe_answers(encoder_app):
    handle, _ = encoder_app
    assert handle.check_health.remote().result(timeout_s=60) is None


@pytest.mark.slow
def test_autoscaled_pool_adds_a_replica_under_load(ray_cluster):
    """The config's autoscaling reaches Serve: sustained load grows the pool from 1 to 2."""
    import time

    config = EncoderConfig(
        num_cpus=0.2,
        torch_threads=1,
        cache_size=0,
        autoscaling={
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 0,
            "downscale_delay_s": 600,
        },
    )
    name, app = "EncoderAutoscaled", "encoder-autoscaled"
    handle = serve.run(
        Encoder.options(name=name, **config.deployment_options()).bind(config.model_dump()),
        name=app,
        route_prefix=None,
    )

    def running() -> int:
        status = serve.status().applications[app].deployments[name]
        return status.replica_states.get("RUNNING", 0)

    try:
        assert running() == 1
        deadline, sent = time.monotonic() + 120, 0
        in_flight: list = []
        while running() < 2 and time.monotonic() < deadline:
            while len(in_flight) < 16:  # keep 8x the target in flight
                in_flight.append(handle.encode.remote(f"{TEXTS[sent % len(TEXTS)]} #{sent}"))
                sent += 1
            in_flight.pop(0).result(timeout_s=60)
        assert running() == 2, f"still 1 replica after {sent} requests"
        for response in in_flight:
            assert response.result(timeout_s=60).shape == (384,)
    finally:
        serve.delete(app)
