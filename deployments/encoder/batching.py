"""Dynamic batching by work: a token budget, a request cap and a wait timeout, without Ray.

`TokenBatcher` queues already-tokenised requests (FIFO) and hands them to one
worker thread in batches. A batch is the longest prefix of the queue whose
padded size (requests x longest request) fits `max_batch_tokens` and whose
length fits `max_batch_size`; it leaves as soon as it is full, or once its
oldest request has waited `batch_wait_timeout_s`, whichever comes first
(requests that queued behind a running batch have usually waited that long
already, so a busy encoder never idles). Inside a batch, `group_by_length`
splits the requests into forward passes of similar length so short texts are
not padded to the longest one; each group's callers are answered as soon as
their pass is done. Every caller gets exactly the row computed from its own
token ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

__all__ = ["BatchPolicy", "BatcherStats", "TokenBatcher", "group_by_length", "take_batch"]


@dataclass(frozen=True)
class BatchPolicy:
    """The batching knobs (documented on `EncoderConfig`, where they are set)."""

    max_batch_tokens: int = 4096
    max_batch_size: int = 128
    batch_wait_timeout_s: float = 0.005
    pass_cost_tokens: int = 64


def take_batch(lengths: Sequence[int], policy: BatchPolicy) -> tuple[int, bool]:
    """How many requests from the head of a queue with these token `lengths` form a batch.

    Returns `(n, full)`: the longest prefix with `n <= max_batch_size` and
    `n * max(lengths[:n]) <= max_batch_tokens`, and whether it is full (the cap
    is reached or the next request would not fit). A head request longer than
    the whole budget still goes, alone (the config keeps the budget above the
    model's maximum length, so this does not happen in service).
    """
    n, widest = 0, 0
    for length in lengths:
        wider = max(widest, length)
        if n + 1 > policy.max_batch_size or (n + 1) * wider > policy.max_batch_tokens:
            return max(n, 1), True
        n, widest = n + 1, wider
    return n, n >= policy.max_batch_size


def group_by_length(lengths: Sequence[int], pass_cost_tokens: int) -> list[list[int]]:
    """Split one batch into forward passes that minimise padded tokens + per-pass cost.

    `lengths[i]` is the token count of request i; returns lists of indices into
    `lengths`, shortest group first, each group sorted by length. The cost of a
    group is `len(group) * max length in it + pass_cost_tokens` (the fixed cost
    of one forward pass expressed in tokens); the split is optimal for that
    cost (dynamic programme over the distinct lengths), so a batch of similar
    lengths stays one pass and a few long texts get a pass of their own.
    """
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    # Runs of equal length: groups only ever split between runs.
    run_ends: list[int] = []
    for pos in range(1, len(order) + 1):
        if pos == len(order) or lengths[order[pos]] != lengths[order[pos - 1]]:
            run_ends.append(pos)
    best = [0.0] + [float("inf")] * len(run_ends)
    cut = [0] * (len(run_ends) + 1)
    for j, end in enumerate(run_ends, 1):
        width = lengths[order[end - 1]]
        for i in range(j):
            start = run_ends[i - 1] if i else 0
            cost = best[i] + (end - start) * width + pass_cost_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = len(run_ends)
    while j:
        i = cut[j]
        start = run_ends[i - 1] if i else 0
        groups.append(order[start : run_ends[j - 1]])
        j = i
    groups.reverse()
    return groups


@dataclass
class BatcherStats:
    """Counters since start: batches, forward passes, requests, real and padded tokens."""

    batches: int = 0
    passes: int = 0
    requests: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    failed: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0


@dataclass
class _Pending:
    ids: list[int]
    future: asyncio.Future[np.ndarray]
    arrival: float = field(default_factory=time.monotonic)


class TokenBatcher:
    """Batches token-id requests by `policy` and runs them with `encode_ids` on one thread.

    `encode_ids(list of id lists) -> (n, dim) float32 array` is called from a
    single worker thread (so the model's thread pool is never entered twice at
    once) while the event loop keeps accepting requests. `submit(ids)` must be
    awaited on one event loop; it returns that request's row, or raises what
    `encode_ids` raised for its group. `close()` fails whatever is still queued
    with `RuntimeError` and stops the worker.
    """

    def __init__(
        self,
        encode_ids: Callable[[list[list[int]]], np.ndarray],
        policy: BatchPolicy,
    ) -> None:
        self.encode_ids = encode_ids
        self.policy = policy
        self.stats = BatcherStats()
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder-forward")
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, ids: list[int]) -> np.ndarray:
        if self._closed:
            raise RuntimeError("encoder batcher is closed")
        loop = asyncio.get_running_loop()
        if self._loop_task is None:
            self._wakeup = asyncio.Event()
            self._loop_task = loop.create_task(self._run(), name="encoder-batcher")
        pending = _Pending(ids, loop.create_future())
        self._queue.append(pending)
        assert self._wakeup is not None
        self._wakeup.set()
        return await pending.future

    async def close(self) -> None:
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("encoder batcher closed"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _next_batch(self) -> tuple[list[_Pending], float | None]:
        """The batch to run now, or ([], seconds to wait) while a partial batch may still grow."""
        while self._queue and self._queue[0].future.done():  # caller went away
            self._queue.popleft()
        if not self._queue:
            return [], None
        live = (p for p in self._queue if not p.future.done())
        head = list(islice(live, self.policy.max_batch_size + 1))
        n, full = take_batch([len(p.ids) for p in head], self.policy)
        wait = self._queue[0].arrival + self.policy.batch_wait_timeout_s - time.monotonic()
        if not full and wait > 0:
            return [], wait
        batch = []
        while len(batch) < n:
            pending = self._queue.popleft()
            if not pending.future.done():
                batch.append(pending)
        return batch, None

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()
            batch, wait = self._next_batch()
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                continue
            groups = group_by_length([len(p.ids) for p in batch], self.policy.pass_cost_tokens)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            started = time.perf_counter()
            await loop.run_in_executor(self._executor, self._forward, loop, batch, groups)
            self.stats.busy_s += time.perf_counter() - started

    def _forward(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], groups: list[list[int]]
    ) -> None:
        """Worker thread: one forward pass per group, each group answered as soon as it is done."""
        for group in groups:
            members = [batch[i] for i in group]
            ids = [p.ids for p in members]
            try:
                vectors = self.encode_ids(ids)
                if vectors.shape[0] != len(ids):
                    raise RuntimeError(f"encoder returned {vectors.shape[0]} rows for {len(ids)}")
            except Exception as exc:  # handed to every caller of this group, who re-raises it
                loop.call_soon_threadsafe(self._fail, members, exc)
                continue
            loop.call_soon_threadsafe(self._deliver, members, vectors)

    def _deliver(self, members: list[_Pending], vectors: np.ndarray) -> None:
        stats = self.stats
        stats.passes += 1
        stats.requests += len(members)
        lengths = [len(p.ids) for p in members]
        stats.tokens += sum(lengths)
        stats.padded_tokens += len(lengths) * max(lengths)
        for row, pending in enumerate(members):
            if not pending.future.done():
                # A copy per caller, read-only: a cached row must not pin the whole batch array.
                vector = vectors[row].copy()
                vector.flags.writeable = False
                pending.future.set_result(vector)

    def _fail(self, members: list[_Pending], exc: BaseException) -> None:
        self.stats.failed += len(members)
        for pending in members:
            if not pending.future.done():
                pending.future.set_exception(exc)
