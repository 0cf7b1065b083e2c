"""RouterCore over real FAISS shards, with an encoder and reranker standing in.

The real encoder and the real vLLM reranker behind this core are exercised in
tests/integration and tests/e2e.
"""

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from deployments.config import AppConfig
from deployments.errors import DeadlineExceeded, NotFound
from deployments.router.core import RouterCore
from deployments.router.schemas import RecommendRequest
from retrieval.collab import ItemKNN
from retrieval.shards import Shard
from tests.factories import make_shards


class LocalShard:
    def __init__(self, shard: Shard, delay: float = 0.0, fail: bool = False):
        self.shard, self.delay, self.fail = shard, delay, fail

    async def search(self, vector, k, exclude, categories):
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("shard down")
        return self.shard.search(vector, k, exclude=exclude, categories=categories)

    async def lookup(self, item_ids):
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("shard down")
        return self.shard.lookup(item_ids)


class ReverseReranker:
    """Puts the retrieval order upside down, so a rerank is visible."""

    async def rerank(self, history_titles, query, candidates, retrieval_scores):
        n = len(candidates)
        return [(i, float(i)) for i in reversed(range(n))]

    async def explain(self, history_titles, history_categories, query, items):
        return [(f"because of {history_titles[:1] or [query]}", True) for _ in items]


class BrokenReranker(ReverseReranker):
    async def rerank(self, *args):
        raise RuntimeError("engine died")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("idx") / "index"
    catalog, vectors, _ = make_shards(path, n=400, dim=16, n_shards=4)
    shards = [Shard.load(path, s) for s in range(4)]
    ids = catalog["item_id"].to_pylist()
    log = pa.table({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["1", "2", "1", "3"]})
    return vectors, shards, ItemKNN.fit(log, ids)


def make_core(world, *, delays=(0, 0, 0, 0), fail=(), reranker=None, cf=True, histories=None):
    vectors, shards, knn = world

    async def encode(text: str) -> np.ndarray:
        return vectors[int(text)]  # "query" i means "like item i+1"

    clients = [
        LocalShard(s, delay=d, fail=i in fail)
        for i, (s, d) in enumerate(zip(shards, delays, strict=True))
    ]
    return RouterCore(
        AppConfig(),
        encode=encode,
        shards=clients,
        reranker=reranker,
        cf=knn if cf else None,
        histories=histories or {},
    )


def ids(answer):
    return [i.item_id for i in answer.items]


async def test_query_returns_k_distinct_nearest_items(world):
    core = make_core(world, cf=False)
    answer = await core.recommend(RecommendRequest(query="9", k=10))
    vectors = world[0]
    exact = [str(i + 1) for i in np.argsort(-(vectors @ vectors[9]))[:10]]
    assert ids(answer) == exact
    assert answer.degraded == [] and not answer.reranked
    assert {"encode", "retrieve", "total"} <= answer.timings_ms.keys()


async def test_seen_items_are_excluded_and_stored_history_used(world):
    core = make_core(world, histories={"u1": ["1", "2"]})
    answer = await core.recommend(RecommendRequest(user_id="u1", history=["5"], k=20))
    assert not {"1", "2", "5"} & set(ids(answer))
    assert len(set(ids(answer))) == 20
    kept = await core.recommend(RecommendRequest(history=["5"], k=5, exclude_seen=False))
    assert ids(kept)[0] == "5"


async def test_collaborative_candidates_are_fused_with_sources(world):
    core = make_core(world)
    answer = await core.recommend(RecommendRequest(history=["1"], k=100))
    sources = {i.item_id: i.sources for i in answer.items}
    assert "cf" in sources["2"] and "cf" in sources["3"]


async def test_category_filter(world):
    core = make_core(world)
    answer = await core.recommend(
        RecommendRequest(query="0", k=15, filters={"category": ["Western"]})
    )
    assert len(answer.items) == 15
    assert all(i.categories == ["Western"] for i in answer.items)


async def test_cold_user_gets_popular_items(world):
    core = make_core(world)
    answer = await core.recommend(RecommendRequest(user_id="stranger", k=3))
    assert ids(answer)[0] == "1" and answer.items[0].sources == ["popular"]


async def test_unknown_history_item_is_404(world):
    with pytest.raises(NotFound, match="'nope'"):
        await make_core(world).recommend(RecommendRequest(history=["1", "nope"]))


async def test_late_shard_is_degraded_not_fatal(world):
    core = make_core(world, delays=(0, 0, 0.5, 0), cf=False)
    answer = await core.recommend(RecommendRequest(query="3", k=10, deadline_ms=150))
    assert answer.degraded == ["shard-2"]
    assert len(answer.items) == 10


async def test_failed_shard_is_degraded(world):
    answer = await make_core(world, fail={1}).recommend(RecommendRequest(query="3", k=5))
    assert answer.degraded == ["shard-1"] and len(answer.items) == 5


async def test_nothing_in_time_is_deadline_exceeded(world):
    core = make_core(world, delays=(0.3,) * 4, cf=False)
    with pytest.raises(DeadlineExceeded):
        await core.recommend(RecommendRequest(query="3", deadline_ms=50))


async def test_rerank_reorders_and_explains(world):
    core = make_core(world, reranker=ReverseReranker(), cf=False)
    plain = await core.recommend(RecommendRequest(query="4", k=20))
    answer = await core.recommend(RecommendRequest(query="4", k=20, rerank=True, explain=True))
    assert answer.reranked and ids(answer) == list(reversed(ids(plain)))
    assert all(i.explanation for i in answer.items[:10])
    assert all(i.explanation is None for i in answer.items[10:])  # explain_top = 10


async def test_failed_rerank_keeps_retrieval_order(world):
    core = make_core(world, reranker=BrokenReranker(), cf=False)
    plain = await core.recommend(RecommendRequest(query="4", k=10))
    answer = await core.recommend(RecommendRequest(query="4", k=10, rerank=True))
    assert not answer.reranked and answer.degraded == ["rerank"]
    assert ids(answer) == ids(plain)


async def test_no_reranker_deployed_is_degraded(world):
    answer = await make_core(world).recommend(
        RecommendRequest(query="4", k=3, rerank=True, explain=True)
    )
    assert answer.degraded == ["rerank", "explain"]
