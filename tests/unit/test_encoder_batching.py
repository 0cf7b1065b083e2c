"""Token-budget batching: batch assembly, length grouping, answers routed to their callers."""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest

from deployments.encoder.batching import BatchPolicy, TokenBatcher, group_by_length, take_batch


def vector_of(ids: list[int]) -> np.ndarray:
    """What the fake model answers for one request: depends on every id and on the order."""
    return np.array([len(ids), sum(ids), sum(i * (k + 1) for k, i in enumerate(ids))], np.float32)


class FakeModel:
    """`encode_ids` that records each forward pass (rows, padded width) and can be slowed down."""

    def __init__(self, delay_s: float = 0.0, poison: int | None = None) -> None:
        self.delay_s = delay_s
        self.poison = poison
        self.passes: list[tuple[int, int]] = []

    def __call__(self, ids: list[list[int]]) -> np.ndarray:
        if self.poison is not None and any(self.poison in x for x in ids):
            raise ValueError("poisoned input")
        self.passes.append((len(ids), max(len(x) for x in ids)))
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.stack([vector_of(x) for x in ids])


def random_requests(n: int, seed: int = 0, lo: int = 3, hi: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 30_000) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


# ---- take_batch ------------------------------------------------------------------


def test_batch_is_the_longest_prefix_within_the_token_budget():
    policy = BatchPolicy(max_batch_tokens=45, max_batch_size=100)
    assert take_batch([10] * 10, policy) == (4, True)
    # The widest request sets the padded width of everything before it.
    assert take_batch([5, 5, 30, 5], BatchPolicy(max_batch_tokens=64, max_batch_size=100)) == (
        2,
        True,
    )


def test_batch_stops_at_the_request_cap():
    policy = BatchPolicy(max_batch_tokens=10_000, max_batch_size=3)
    assert take_batch([4] * 10, policy) == (3, True)
    assert take_batch([4] * 3, policy) == (3, True)


def test_partial_batch_is_not_full():
    policy = BatchPolicy(max_batch_tokens=100, max_batch_size=10)
    assert take_batch([10, 10], policy) == (2, False)
    assert take_batch([], policy) == (0, False)


def test_request_longer_than_the_budget_still_runs_alone():
    assert take_batch([100, 5], BatchPolicy(max_batch_tokens=50, max_batch_size=8)) == (1, True)


# ---- group_by_length ----------------------------------------------------------


def padded(groups: list[list[int]], lengths: list[int]) -> int:
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def test_groups_partition_the_batch_sorted_by_length():
    lengths = [12, 3, 40, 7, 7, 39, 3, 22]
    groups = group_by_length(lengths, pass_cost_tokens=8)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_similar_lengths_stay_one_pass_and_outliers_get_their_own():
    assert len(group_by_length([20, 21, 22, 20, 23], pass_cost_tokens=64)) == 1
    lengths = [8] * 30 + [250] * 2
    groups = group_by_length(lengths, pass_cost_tokens=64)
    assert [sorted({lengths[i] for i in g}) for g in groups] == [[8], [250]]
    assert padded(groups, lengths) == 30 * 8 + 2 * 250


def test_pass_cost_controls_how_eagerly_batches_split():
    lengths = [5, 6, 7, 8, 9, 10]
    assert len(group_by_length(lengths, pass_cost_tokens=0)) == 6
    assert len(group_by_length(lengths, pass_cost_tokens=10_000)) == 1


def test_grouping_never_pads_more_than_one_pass():
    rng = random.Random(1)
    for _ in range(50):
        lengths = [rng.randint(1, 128) for _ in range(rng.randint(1, 64))]
        groups = group_by_length(lengths, pass_cost_tokens=rng.choice([0, 16, 64, 256]))
        assert padded(groups, lengths) <= len(lengths) * max(lengths)


def test_empty_batch_has_no_groups():
    assert group_by_length([], 64) == []


# ---- TokenBatcher ----------------------------------------------------------------


async def test_concurrent_callers_each_get_their_own_vector():
    model = FakeModel(delay_s=0.01)
    batcher = TokenBatcher(model, BatchPolicy(max_batch_tokens=1024, max_batch_size=32))
    requests = random_requests(150)
    answers = await asyncio.gather(*(batcher.submit(ids) for ids in requests))
    for ids, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, vector_of(ids))
    assert batcher.stats.requests == 150
    assert batcher.stats.largest_batch > 1, "concurrent requests were never batched"
    assert batcher.stats.batches < 150
    await batcher.close()


async def test_token_budget_and_request_cap_are_never_exceeded(monkeypatch):
    policy = BatchPolicy(max_batch_tokens=300, max_batch_size=9, pass_cost_tokens=16)
    model = FakeModel(delay_s=0.005)
    batcher = TokenBatcher(model, policy)
    batches: list[list[int]] = []
    forward = batcher._forward

    def recording_forward(loop, batch, groups):
        batches.append([len(p.ids) for p in batch])
        assert padded(groups, [len(p.ids) for p in batch]) <= policy.max_batch_tokens
        forward(loop, batch, groups)

    monkeypatch.setattr(batcher, "_forward", recording_forward)
    requests = random_requests(200, seed=2, lo=2, hi=40)
    answers = await asyncio.gather(*(batcher.submit(ids) for ids in requests))
    for ids, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, vector_of(ids))
    assert sum(len(b) for b in batches) == 200
    assert max(len(b) for b in batches) > 1
    for lengths in batches:
        assert len(lengths) <= policy.max_batch_size
        assert len(lengths) * max(lengths) <= policy.max_batch_tokens
    for rows, width in model.passes:
        assert rows * width <= policy.max_batch_tokens
    await batcher.close()


async def test_lone_request_waits_about_the_timeout_and_a_full_batch_does_not_wait():
    batcher = TokenBatcher(FakeModel(), BatchPolicy(batch_wait_timeout_s=0.1, max_batch_size=4))
    started = time.monotonic()
    await batcher.submit([1, 2, 3])
    assert 0.08 <= time.monotonic() - started < 1.0
    await batcher.close()

    batcher = TokenBatcher(FakeModel(), BatchPolicy(batch_wait_timeout_s=30, max_batch_size=4))
    started = time.monotonic()
    await asyncio.gather(*(batcher.submit([i, i]) for i in range(4)))
    assert time.monotonic() - started < 5.0, "a full batch waited for the timeout"
    await batcher.close()


async def test_a_failing_pass_fails_only_its_own_callers():
    model = FakeModel(poison=99_999)
    batcher = TokenBatcher(model, BatchPolicy(pass_cost_tokens=0, batch_wait_timeout_s=0.02))
    good = [[1, 2], [3, 4, 5]]
    results = await asyncio.gather(
        *(batcher.submit(ids) for ids in [*good, [99_999, 1, 1, 1, 1, 1, 1]]),
        return_exceptions=True,
    )
    np.testing.assert_array_equal(results[0], vector_of(good[0]))
    np.testing.assert_array_equal(results[1], vector_of(good[1]))
    assert isinstance(results[2], ValueError)
    assert batcher.stats.failed == 1
    await batcher.close()


async def test_a_caller_that_goes_away_is_not_encoded_and_does_not_disturb_the_others():
    # The router stops waiting at its deadline and Serve cancels the call in the replica:
    # the queued request is dropped, not run.
    model = FakeModel(delay_s=0.02)
    batcher = TokenBatcher(model, BatchPolicy(batch_wait_timeout_s=0.05))
    leaving = asyncio.ensure_future(batcher.submit([7, 7, 7]))
    staying = asyncio.ensure_future(batcher.submit([8, 8]))
    await asyncio.sleep(0)
    leaving.cancel()
    np.testing.assert_array_equal(await staying, vector_of([8, 8]))
    assert leaving.cancelled()
    assert model.passes == [(1, 2)]  # only [8, 8]: the cancelled request never ran
    await batcher.close()


async def test_answers_are_read_only_copies():
    batcher = TokenBatcher(FakeModel(), BatchPolicy(batch_wait_timeout_s=0))
    answer = await batcher.submit([1, 2])
    with pytest.raises(ValueError):
        answer[0] = 5.0
    assert answer.base is None or answer.base.shape == answer.shape
    await batcher.close()


async def test_closed_batcher_refuses_work():
    batcher = TokenBatcher(FakeModel(), BatchPolicy())
    await batcher.close()
    with pytest.raises(RuntimeError):
        await batcher.submit([1])
