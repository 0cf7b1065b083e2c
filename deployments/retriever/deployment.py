"""The ShardRetriever Serve deployments: each serves some shards, queried scatter-gather.

`ShardLayout` says which shards each deployment serves (`retriever.shards_per_replica`):
the router makes one call per deployment, which searches its shards and merges
them. A deployment owns its shards' files (change logs, snapshots) and must run
exactly one replica; reads scale with more shards. Search-time settings arrive as the
deployment's `user_config` and apply in place (`reconfigure`), without a reload.
FAISS releases the GIL, so slow searches run in threads off the event loop; fast
ones (see `RetrieverConfig.inline_search_ms`) run on it, where they cost less
than the hop to a thread. Lookups follow the same rule, timed on their own.
Work off the loop (slow searches, writes, reloads, health checks) runs in the
replica's own thread pool, whose threads search with `retriever.faiss_threads`
OpenMP threads like the loop's: OpenMP's thread count is a per-thread setting, and
a thread that never set it uses every core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import faiss
import numpy as np
from ray import serve
from ray.serve import Application

from deployments.heap import settle_heap
from deployments.logs import replica_logging
from deployments.retriever.core import ShardGroupCore, split_config
from retrieval.config import AppConfig, RetrieverConfig
from retrieval.shards import Found, Hit, Item, ShardLayout

T = TypeVar("T")

__all__ = ["SearchTimer", "ShardRetriever", "bind_shards", "faiss_thread_pool"]


class SearchTimer:
    """A moving average of search times that says whether the next search runs inline."""

    def __init__(self, inline_below_s: float, smoothing: float = 0.1) -> None:
        self.inline_below_s = inline_below_s
        self.smoothing = smoothing
        self.mean_s = 0.0

    def inline(self) -> bool:
        return self.mean_s < self.inline_below_s

    def record(self, seconds: float) -> None:
        self.mean_s += self.smoothing * (seconds - self.mean_s)


@serve.deployment
class ShardRetriever:
    def __init__(
        self,
        data: dict[str, str],
        shard_nos: list[int],
        n_shards: int,
        config: dict,
        dim: int | None = None,
    ):
        replica_logging()
        index_dir = AppConfig.model_validate(data).index_path  # this node's copy
        self.core = ShardGroupCore(
            index_dir, shard_nos, n_shards, RetrieverConfig.model_validate(config), dim
        )
        self.timer = SearchTimer(self.core.config.inline_search_ms / 1e3)
        self.lookup_timer = SearchTimer(self.core.config.inline_search_ms / 1e3)
        self.threads = faiss_thread_pool(self.core.config.faiss_threads)
        settle_heap()  # the shards' rows, out of the collector's full passes

    def reconfigure(self, config: dict) -> None:
        self.core.configure(RetrieverConfig.model_validate(config))
        # New search settings: forget the old timings, start inline and measure again.
        self.timer = SearchTimer(self.core.config.inline_search_ms / 1e3)
        self.lookup_timer = SearchTimer(self.core.config.inline_search_ms / 1e3)

    @staticmethod
    def _timed(timer: SearchTimer, work: Callable[..., T], *args) -> T:
        started = time.perf_counter()
        out = work(*args)
        timer.record(time.perf_counter() - started)
        return out

    async def _search(self, search: Callable[..., T], *args, timer: SearchTimer | None = None) -> T:
        """Inline while calls of this kind are fast, else in a worker thread (`SearchTimer`)."""
        timer = timer or self.timer
        if timer.inline():
            return self._timed(timer, search, *args)
        return await self._in_thread(self._timed, timer, search, *args)

    async def _in_thread(self, work: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.threads, work, *args)

    async def search(
        self, vector: np.ndarray, k: int, exclude: list[str], categories: list[str] | None
    ) -> list[Hit]:
        """The top `k` with their rows (title, text, categories)."""
        return await self._search(self.core.search, vector, k, exclude, categories)

    async def search_ids(
        self,
        vector: np.ndarray,
        k: int,
        exclude: list[str],
        categories: list[str] | None,
        also: list[str] | None = None,
        rows_for: int = 0,
    ) -> Found:
        """The top `k` as ids and scores, the scores of the `also` items, and the rows of the
        best `rows_for`: what the router asks (rows only for the candidates it may show)."""
        return await self._search(
            self.core.search_ids, vector, k, exclude, categories, also or [], rows_for
        )

    async def lookup(self, item_ids: list[str]) -> dict[str, tuple[Hit, np.ndarray]]:
        """Rows and vectors of the items these shards hold; timed apart from the searches."""
        return await self._search(self.core.lookup, item_ids, timer=self.lookup_timer)

    async def upsert(self, items: list[Item], vectors: np.ndarray) -> int:
        return await self._in_thread(self.core.upsert, items, vectors)

    async def delete(self, item_ids: list[str]) -> list[str]:
        return await self._in_thread(self.core.delete, item_ids)

    async def reload(self) -> dict[int, dict]:
        stats = await self._in_thread(self.core.reload)
        settle_heap()  # the old shards' rows collected, the new ones frozen
        return stats

    async def stats(self) -> list[dict]:
        return self.core.stats()

    async def check_health(self) -> None:
        await self._in_thread(self.core.check_health)


def faiss_thread_pool(faiss_threads: int) -> ThreadPoolExecutor:
    """Worker threads that each search with `faiss_threads` OpenMP threads."""
    return ThreadPoolExecutor(
        thread_name_prefix="faiss",
        initializer=faiss.omp_set_num_threads,
        initargs=(faiss_threads,),
    )


def bind_shards(
    data: dict[str, str],
    layout: ShardLayout,
    replica: int,
    config: RetrieverConfig,
    dim: int | None = None,
    *,
    options: dict[str, Any] | None = None,
) -> Application:
    """The deployment serving `layout.shards_of(replica)`, named `ShardRetriever-<replica>`.

    `data` holds the AppConfig's `data_dir` (and optionally `cache_dir`): the replica
    finds the index on the node it runs on, in the folder or in its mirror of a URI. One
    replica (it owns its shards' change logs and snapshots); search-time settings in the
    user_config (applied in place when only they change). `options`: more Serve options
    (the app's `internal_options`).
    """
    init, user = split_config(config)
    return ShardRetriever.options(
        name=f"ShardRetriever-{replica}",
        num_replicas=1,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        user_config=user,
        ray_actor_options=config.actor_options(),
        **(options or {}),
    ).bind(data, layout.shards_of(replica), layout.n_shards, init, dim)
