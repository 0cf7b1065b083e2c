"""`llmrec bench encoder` pieces that need no cluster: request texts, settings, report."""

from __future__ import annotations

import argparse

import pytest

from cluster.bench import encoder as bench_encoder
from cluster.bench.encoder import SERVE_MODES, _encoder_config, _text_maker, print_report
from retrieval.config import PROJECT_ROOT


def test_request_texts_are_distinct_so_no_cache_can_help():
    sentences, titles = bench_encoder.bench_texts()
    text = _text_maker(sentences, titles)
    texts = [text(k) for k in range(20_000)]
    assert len(set(texts)) == len(texts)
    assert all(t.endswith(".") and len(t.split()) >= 5 for t in texts[:100])


def test_llmrec_runs_the_served_settings_with_the_cache_off():
    cfg = _encoder_config(PROJECT_ROOT / "ray_config.yaml", ["max_batch_tokens=1024"])
    assert cfg.cache_size == 0
    assert cfg.max_batch_tokens == 1024
    with pytest.raises(ValueError):
        _encoder_config(PROJECT_ROOT / "ray_config.yaml", ["no_such_knob=1"])


def test_throughput_mode_is_what_llmrec_up_starts_ray_with():
    from cluster.local import RAY_START_ENV

    assert SERVE_MODES["throughput"] == RAY_START_ENV
    assert not any(k.startswith("RAY_SERVE_") for k in SERVE_MODES["default"])


def test_bench_is_registered_under_llmrec_bench():
    from cluster.cli import parser

    args = parser().parse_args(["bench", "encoder", "--concurrency", "1", "64", "--json", "x"])
    assert args.func is bench_encoder.cmd_bench_encoder
    assert args.concurrency == [1, 64] and args.json == "x"
    assert isinstance(args, argparse.Namespace)


def test_report_prints_ratios_at_the_highest_concurrency(capsys):
    rows = [
        {"system": s, "concurrency": 64, "throughput_rps": r, "p50_ms": 1.0, "p99_ms": p}
        for s, r, p in (("naive", 40.0, 900.0), ("llmrec", 160.0, 500.0), ("peer", 80.0, 600.0))
    ]
    print_report(
        {
            "results": rows,
            "serve_mode": "throughput",
            "cpu_fast_path": "onnx",
            "cpu_fast_path_cosine": 0.99999,
            "cpu_fast_path_cosines": {"onnx": 0.99999, "bf16": 0.99998},
        }
    )
    out = capsys.readouterr().out
    assert "llmrec/naive throughput 4.00x" in out
    assert "llmrec/peer throughput 2.00x" in out


async def test_closed_loop_driver_counts_answers_and_failures():
    """Against a tiny HTTP server: keep-alive, distinct bodies, 500s counted as errors."""
    import asyncio
    import json

    from cluster.bench.driver import closed_loop_http

    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            k = json.loads(await reader.readexactly(length))["k"]
            seen.append(k)
            await asyncio.sleep(0.002)
            status = b"500 Oops" if k % 10 == 9 else b"200 OK"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    async def serve(reader, writer):
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        point = await closed_loop_http(
            f"http://127.0.0.1:{port}/x",
            lambda k: {"k": k},
            concurrency=4,
            duration_s=0.6,
            warmup_s=0.2,
        )
    assert len(set(seen)) == len(seen) > 20
    assert point.requests > 10 and point.errors > 0
    assert point.errors < point.requests
    assert 2.0 <= point.p50_ms <= point.p99_ms < 1000
    assert point.throughput_rps == point.requests / 0.6


def test_the_reported_fast_path_is_the_one_llmrec_serves(capsys):
    from cluster.bench.encoder import served_fast_path
    from retrieval.config import EncoderConfig

    vnni, avx2 = frozenset({"avx2", "avx512_vnni"}), frozenset({"avx2"})
    assert served_fast_path(EncoderConfig(), vnni) == "int8"
    assert served_fast_path(EncoderConfig(), avx2) == "int8"  # with 7-bit weights
    assert served_fast_path(EncoderConfig(), frozenset({"sse4_2"})) == "onnx"
    assert served_fast_path(EncoderConfig(engine="onnx", precision="fp32"), vnni) == "onnx"
    assert served_fast_path(EncoderConfig(engine="torch", precision="bf16")) == "bf16"
    assert served_fast_path(EncoderConfig(engine="torch"), vnni) is None
    assert served_fast_path(EncoderConfig(num_gpus=1)) is None
    doc = {
        "results": [
            {"system": "llmrec", "concurrency": 1, "throughput_rps": 1.0, "p50_ms": 1, "p99_ms": 1}
        ],
        "serve_mode": "throughput",
        "cpu_fast_path": "int8",
        "cpu_fast_path_cosines": {"onnx": 0.999999, "int8": 0.993, "bf16": 0.99998},
        "cpu_fast_path_top10_overlap": {"onnx": 1.0, "int8": 0.912, "bf16": 0.998},
    }
    print_report(doc)
    out = capsys.readouterr().out
    assert "int8 (served): mean cosine to PyTorch fp32 0.993000" in out
    assert "bf16: mean cosine to PyTorch fp32 0.999980" in out
    assert "91.2%" in out and "99.8%" in out


async def test_a_refused_bench_client_waits_the_retry_after_it_was_given():
    import time

    from cluster.bench.driver import honour_retry_after

    started = time.perf_counter()
    await honour_retry_after([(b"content-type", b"text/plain"), (b"Retry-After", b"0.2")])
    waited = time.perf_counter() - started
    assert 0.2 <= waited < 1.0
    started = time.perf_counter()
    await honour_retry_after([(b"content-type", b"text/plain")])
    await honour_retry_after([(b"retry-after", b"Wed, 21 Oct 2026 07:28:00 GMT")])
    assert time.perf_counter() - started < 0.05
