"""A small closed-loop HTTP load driver for benchmarks (httpx's httpcore + asyncio, no Ray).

`closed_loop` keeps `concurrency` clients busy: each posts a request, waits for
the answer and posts the next. Answers that complete inside the measuring
window (after the warm-up) count; throughput is those answers per second of
window, latencies are their full round trips. Every client has its own
keep-alive connection, like independent callers: one shared pool for all of
them held requests back in the pool under load (seconds of p99 that were the
driver's, not the server's). Requests go through httpcore, the transport under
httpx, which took about a third of `httpx.AsyncClient`'s CPU per request here:
on a 2-core machine the driver shares the cores with the servers it measures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
import numpy as np

__all__ = ["PointResult", "closed_loop", "run_closed_loop", "wait_until_up"]

_FAILURES = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException)
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class PointResult:
    """One load point: answers/s in the window, latency percentiles (ms), failed answers."""

    concurrency: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


async def closed_loop(
    url: str,
    make_body: Callable[[int], dict[str, Any]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float = 60.0,
) -> PointResult:
    """Drive `url` with `concurrency` clients; request k has body `make_body(k)`."""
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    window_start = started + warmup_s
    window_end = window_start + duration_s
    timeouts = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout_s)}

    async def client() -> None:
        nonlocal errors
        async with httpcore.AsyncConnectionPool(max_connections=1) as http:
            while True:
                body = json.dumps(make_body(next(counter))).encode()
                sent = time.perf_counter()
                if sent >= window_end:
                    return
                try:
                    response = await http.request(
                        "POST", url, headers=_JSON, content=body, extensions=timeouts
                    )
                    ok = response.status == 200
                except _FAILURES:
                    ok = False
                done = time.perf_counter()
                if window_start <= done <= window_end:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    lat_ms = np.asarray(latencies) * 1e3
    return PointResult(
        concurrency=concurrency,
        throughput_rps=len(latencies) / duration_s,
        p50_ms=float(np.percentile(lat_ms, 50)) if len(lat_ms) else float("nan"),
        p99_ms=float(np.percentile(lat_ms, 99)) if len(lat_ms) else float("nan"),
        requests=len(latencies),
        errors=errors,
    )


def run_closed_loop(
    url: str,
    make_body: Callable[[int], dict[str, Any]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> PointResult:
    """`closed_loop` on a fresh event loop (for synchronous callers)."""
    return asyncio.run(
        closed_loop(
            url, make_body, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s
        )
    )


def wait_until_up(url: str, body: dict[str, Any], *, timeout_s: float) -> None:
    """Post `body` to `url` until it answers 200; raises `TimeoutError` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.post(url, json=body, timeout=10.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s: {last}")
