"""The benchmarks' closed-loop driver, its HTTP client, and the pieces every bench shares.

`closed_loop` keeps `concurrency` clients busy: each sends a request, waits for
the answer and sends the next. It stops after a number of requests, or when a
measuring window that follows a warm-up ends; answers that complete inside
the window count: throughput is those answers per second of window, latencies
are their full round trips, percentiles are nearest rank
(`retrieval.metrics.percentile`, the definition of every llmrec report).

`closed_loop_http` drives a URL with it (no Ray). Every client has its own
keep-alive connection, like independent callers: one shared pool for all of
them held requests back in the pool under load (seconds of p99 that were the
driver's, not the server's). Requests go through httpcore, the transport under
httpx, which took about a third of `httpx.AsyncClient`'s CPU per request here:
on a 2-core machine the driver shares the cores with the servers it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpcore
import httpx

from retrieval.metrics import percentile_ms

__all__ = [
    "FAILURES",
    "ClosedLoopResult",
    "NotOk",
    "client_connections",
    "closed_loop",
    "honour_retry_after",
    "closed_loop_http",
    "free_port",
    "timeouts",
    "wait_until_up",
]

T = TypeVar("T")

FAILURES = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException)
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class ClosedLoopResult(Generic[T]):
    """One closed-loop run: what was answered inside the window, and what failed there."""

    concurrency: int
    window_s: float
    """The measuring window; without a duration, the run from first request to last answer."""
    answers: dict[int, T]
    """Request number → its answer."""
    latencies_s: list[float]
    """Round trip of every answer, in seconds."""
    errors: int
    """Requests that failed (one of the driver's `failures`)."""

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.window_s if self.window_s > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        """Median round trip in ms; NaN when nothing was answered (not a latency of 0)."""
        return percentile_ms(self.latencies_s, 50) if self.latencies_s else math.nan

    @property
    def p99_ms(self) -> float:
        """99th-percentile round trip in ms; NaN when nothing was answered."""
        return percentile_ms(self.latencies_s, 99) if self.latencies_s else math.nan


async def closed_loop(
    send: Callable[[int, int], Awaitable[T]],
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup_s: float = 0.0,
    failures: tuple[type[BaseException], ...] = (),
    on_answer: Callable[[], None] | None = None,
) -> ClosedLoopResult[T]:
    """Run `concurrency` clients; client c sends request k as `send(c, k)`, k = 0, 1, 2, …

    The run stops after request `requests - 1`, or once `duration_s` seconds of
    window have passed after `warmup_s` seconds of warm-up (give at least one
    of the two). A request that raises one of `failures` counts as an error;
    any other exception propagates. `on_answer` is called after every answer.
    """
    if requests is None and duration_s is None:
        raise ValueError("closed_loop needs `requests` or `duration_s`")
    counter = itertools.count()
    answers: dict[int, T] = {}
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    window_start = started + warmup_s
    window_end = math.inf if duration_s is None else window_start + duration_s

    async def client(c: int) -> None:
        nonlocal errors
        while True:
            k = next(counter)
            sent = time.perf_counter()
            if (requests is not None and k >= requests) or sent >= window_end:
                return
            try:
                answer = await send(c, k)
                ok = True
            except failures:
                ok = False
            done = time.perf_counter()
            if window_start <= done <= window_end:
                if ok:
                    answers[k] = answer
                    latencies.append(done - sent)
                else:
                    errors += 1
            if ok and on_answer is not None:
                on_answer()

    await asyncio.gather(*(client(c) for c in range(concurrency)))
    window_s = duration_s if duration_s is not None else time.perf_counter() - window_start
    return ClosedLoopResult(concurrency, window_s, answers, latencies, errors)


class NotOk(Exception):
    """An HTTP answer other than 200."""


@contextlib.asynccontextmanager
async def client_connections(concurrency: int) -> AsyncIterator[list[httpcore.AsyncConnectionPool]]:
    """One keep-alive connection per client (see the module docstring), closed at the end."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpcore.AsyncConnectionPool(max_connections=1))
            for _ in range(concurrency)
        ]


def timeouts(seconds: float) -> dict[str, dict[str, float]]:
    """httpcore request extensions bounding connect, read, write and pool waits."""
    return {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), seconds)}


async def closed_loop_http(
    url: str,
    make_body: Callable[[int], dict[str, Any]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float = 60.0,
) -> ClosedLoopResult[None]:
    """`closed_loop` of JSON POSTs to `url`; request k has body `make_body(k)`.

    Answers other than 200, network and protocol errors and timeouts count as errors.
    """
    extensions = timeouts(timeout_s)
    async with client_connections(concurrency) as pools:

        async def send(c: int, k: int) -> None:
            body = json.dumps(make_body(k)).encode()
            response = await pools[c].request(
                "POST", url, headers=_JSON, content=body, extensions=extensions
            )
            if response.status != 200:
                await honour_retry_after(response.headers)
                raise NotOk(response.status)

        return await closed_loop(
            send,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            failures=(*FAILURES, NotOk),
        )


async def honour_retry_after(headers: list[tuple[bytes, bytes]]) -> None:
    """Wait the `Retry-After` seconds of a refusal, as a well-behaved client does.

    A closed-loop client that sent again at once would measure its own storm of
    refusals rather than what the service can take.
    """
    for name, value in headers:
        if name.lower() == b"retry-after":
            with contextlib.suppress(ValueError):  # an HTTP date: not sent by this service
                await asyncio.sleep(min(float(value), 10.0))
            return


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
