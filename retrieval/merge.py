"""Scatter-gather: merge per-shard top-k lists into one global top-k."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Protocol, TypeVar

__all__ = ["merge_top_k"]


class _Scored(Protocol):
    item_id: str
    score: float


T = TypeVar("T", bound=_Scored)


def merge_top_k(shard_results: Iterable[list[T]], k: int) -> list[T]:
    """The `k` best hits over all shards, best first, each item once.

    Each input list must be sorted best first (as `Shard.search` returns); the
    merge is a k-way heap merge, so it reads only as far as it needs. Equal
    scores keep shard order; a repeated item keeps its best score.
    """
    merged: list[T] = []
    seen: set[str] = set()
    for hit in heapq.merge(*shard_results, key=lambda h: -h.score):
        if hit.item_id in seen:
            continue
        seen.add(hit.item_id)
        merged.append(hit)
        if len(merged) == k:
            break
    return merged
