"""RouterCore over real FAISS shards, with an encoder and reranker standing in.

The real encoder and the real vLLM reranker behind this core are exercised in
tests/integration and tests/e2e.
"""

import asyncio
import dataclasses
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from deployments.errors import BackendUnavailable, DeadlineExceeded, NotFound, QueueFull
from deployments.reranker.core import Explanation, RerankerCore, RerankOutcome
from deployments.reranker.prompts import Candidate, PromptContext
from deployments.router.core import RouterCore
from deployments.router.schemas import RecommendRequest
from retrieval.collab import AlsModel, ItemKNN
from retrieval.config import AppConfig, RerankerConfig, RouterConfig
from retrieval.ease import EaseModel
from retrieval.fusion import FEATURES, FusionWeights
from retrieval.profiles import user_profile
from retrieval.sequential import SequentialModel
from retrieval.shards import Shard, shard_of
from tests.factories import ScriptedEngine, make_shards


class LocalShard:
    def __init__(self, shard: Shard, delay: float = 0.0, fail: bool = False, bug: bool = False):
        self.shard, self.delay, self.fail, self.bug = shard, delay, fail, bug
        self.looked_up: list[str] = []
        self.excluded: list[list[str]] = []

    async def search_ids(self, vector, k, exclude, categories, also, rows_for=0):
        await asyncio.sleep(self.delay)
        if self.bug:
            raise KeyError("a bug in the shard, not an outage")
        if self.fail:
            raise BackendUnavailable("ShardRetriever-0 did not answer")
        self.excluded.append(list(exclude))
        return self.shard.find(
            vector, k, exclude=exclude, categories=categories, also=also, rows_for=rows_for
        )

    async def lookup(self, item_ids):
        await asyncio.sleep(self.delay)
        if self.fail:
            raise BackendUnavailable("ShardRetriever-0 did not answer")
        self.looked_up.extend(item_ids)
        return self.shard.lookup(item_ids)


class ReverseReranker:
    """Puts the retrieval order upside down, so a rerank is visible."""

    def __init__(self):
        self.weights: list[float | None] = []
        self.deadlines: list[float | None] = []

    async def rerank(self, context, retrieval_scores, weight=None, deadline=None, explain_after=0):
        self.weights.append(weight)
        self.deadlines.append(deadline)
        n = len(context.candidates)
        return RerankOutcome([(i, float(i)) for i in reversed(range(n))], n, 160)

    async def explain(self, context, targets, item_text_chars=None, deadline=None):
        anchor = context.history_titles[:1] or [context.query]
        return [Explanation(f"because of {anchor}", "llm", "ok") for _ in targets]


class BrokenReranker(ReverseReranker):
    async def rerank(self, *args):
        raise BackendUnavailable("Reranker did not answer")


class BuggyReranker(ReverseReranker):
    async def rerank(self, *args):
        raise KeyError("a bug, not an outage")


class BusyReranker(ReverseReranker):
    async def rerank(self, *args):
        raise QueueFull("LLM queue full")

    async def explain(self, *args):
        raise DeadlineExceeded("would not finish")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("idx") / "index"
    catalog, vectors, _ = make_shards(path, n=400, dim=16, n_shards=4)
    shards = [Shard.load(path, s) for s in range(4)]
    ids = catalog["item_id"].to_pylist()
    log = pa.table({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["1", "2", "1", "3"]})
    return vectors, shards, ItemKNN.fit(log, ids)


def make_core(
    world,
    *,
    delays=(0, 0, 0, 0),
    fail=(),
    reranker=None,
    cf=True,
    histories=None,
    als=None,
    ease=None,
    sequential=None,
    fusion=None,
    config=None,
    encode=None,
    bug=(),
):
    vectors, shards, knn = world

    async def by_index(text: str) -> np.ndarray:
        return vectors[int(text)]  # "query" i means "like item i+1"

    clients = [
        LocalShard(s, delay=d, fail=i in fail, bug=i in bug)
        for i, (s, d) in enumerate(zip(shards, delays, strict=True))
    ]
    return RouterCore(
        config or AppConfig(),
        encode=encode or by_index,
        shards=clients,
        reranker=reranker,
        cf=knn if cf else None,
        als=als,
        ease=ease,
        sequential=sequential,
        fusion=fusion,
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


async def test_a_history_longer_than_the_profile_window_is_accepted_and_all_excluded(world):
    history = [str(i) for i in range(1, 61)]  # 60 catalog ids; the profile uses the last 50
    answer = await make_core(world).recommend(RecommendRequest(history=history, k=50))
    assert len(ids(answer)) == 50 and not set(history) & set(ids(answer))
    with pytest.raises(NotFound, match="'nope'"):
        await make_core(world).recommend(RecommendRequest(history=["nope", *history], k=5))


async def test_a_heavy_user_never_sees_any_of_thousands_of_interactions_again(world):
    rng = np.random.default_rng(7)
    # 2,000 interactions over 300 distinct items, repeats and all, as real logs have.
    log = [str(i) for i in rng.choice(np.arange(1, 301), size=2000)]
    seen = set(log)
    core = make_core(world, histories={"heavy": log})
    answer = await core.recommend(RecommendRequest(user_id="heavy", k=60))
    assert len(ids(answer)) == 60 and not seen & set(ids(answer))
    by_query = await core.recommend(RecommendRequest(user_id="heavy", query="7", k=60))
    assert not seen & set(ids(by_query))


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


async def test_failed_shard_is_degraded_and_a_bug_in_one_is_not_hidden(world):
    answer = await make_core(world, fail={1}).recommend(RecommendRequest(query="3", k=5))
    assert answer.degraded == ["shard-1"] and len(answer.items) == 5
    with pytest.raises(KeyError, match="a bug in the shard"):
        await make_core(world, bug={2}).recommend(RecommendRequest(query="3", k=5))


async def test_a_hung_shard_costs_the_shard_timeout_not_the_whole_deadline(world):
    # A dead replica's calls wait until Serve has a new one: seconds, not the deadline's worth.
    config = AppConfig(router=RouterConfig(shard_timeout_ms=200))
    core = make_core(world, delays=(0, 0, 30, 0), config=config)
    started = time.perf_counter()
    answer = await core.recommend(RecommendRequest(history=["1", "2"], k=10, deadline_ms=5000))
    assert time.perf_counter() - started < 1.0
    assert answer.degraded == ["shard-2"] and len(answer.items) == 10


async def test_a_failed_replica_is_skipped_for_shard_retry_s_then_tried_again(world):
    config = AppConfig(router=RouterConfig(shard_timeout_ms=100, shard_retry_s=0.3))
    core = make_core(world, delays=(0, 0, 30, 0), config=config)
    hung = core.shards[2]
    calls = []
    real = hung.search_ids

    async def counted(*args):
        calls.append(time.perf_counter())
        return await real(*args)

    hung.search_ids = counted
    request = RecommendRequest(query="3", k=5, deadline_ms=5000)
    first = await core.recommend(request)
    assert first.degraded == ["shard-2"] and len(calls) == 1
    started = time.perf_counter()
    second = await core.recommend(request)  # within shard_retry_s: not called, no wait
    assert time.perf_counter() - started < 0.09
    assert second.degraded == ["shard-2"] and len(second.items) == 5 and len(calls) == 1
    await asyncio.sleep(0.3)
    hung.delay = 0.0  # back
    third = await core.recommend(request)
    assert third.degraded == [] and len(calls) == 2
    always = AppConfig(router=RouterConfig(shard_timeout_ms=100, shard_retry_s=0))
    waiting = make_core(world, delays=(0, 0, 30, 0), config=always)
    for _ in range(2):
        started = time.perf_counter()
        assert (await waiting.recommend(request)).degraded == ["shard-2"]
        assert time.perf_counter() - started >= 0.09  # waits the timeout every time


async def test_a_dead_or_hung_encoder_costs_the_query_only(world):
    async def dead(text: str) -> np.ndarray:
        raise BackendUnavailable("Encoder did not answer")

    async def hung(text: str) -> np.ndarray:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    core = make_core(world, encode=dead, histories={"u1": ["1", "2"]})
    alone = await core.recommend(RecommendRequest(query="3", k=5))
    assert alone.degraded == ["encoder"] and [i.sources for i in alone.items][0] == ["popular"]
    with_history = await core.recommend(RecommendRequest(user_id="u1", query="3", k=5))
    assert with_history.degraded == ["encoder"] and "ann" in with_history.items[0].sources
    assert not {"1", "2"} & set(ids(with_history))

    config = AppConfig(router=RouterConfig(encode_timeout_ms=100))
    slow = make_core(world, encode=hung, config=config)
    started = time.perf_counter()
    answer = await slow.recommend(RecommendRequest(query="3", k=5, deadline_ms=5000))
    assert time.perf_counter() - started < 1.0 and answer.degraded == ["encoder"]


async def test_requests_beyond_max_in_flight_are_refused_at_once(world):
    config = AppConfig(router=RouterConfig(max_in_flight=2))
    core = make_core(world, delays=(0.3, 0, 0, 0), config=config, cf=False)
    busy = [asyncio.create_task(core.recommend(RecommendRequest(query="3"))) for _ in range(2)]
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    with pytest.raises(QueueFull, match="capacity"):
        await core.recommend(RecommendRequest(query="4"))
    assert time.perf_counter() - started < 0.05
    assert all(len(a.items) == 10 for a in await asyncio.gather(*busy))
    assert core.in_flight == 0 and (await core.recommend(RecommendRequest(query="4"))).items


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


async def test_a_busy_reranker_degrades_at_once_and_a_bug_is_not_hidden(world):
    core = make_core(world, reranker=BusyReranker(), cf=False)
    answer = await core.recommend(
        RecommendRequest(query="4", k=5, rerank=True, explain=True, deadline_ms=60_000)
    )
    assert answer.degraded == ["rerank", "explain"] and answer.timings_ms["total"] < 1000
    with pytest.raises(KeyError):
        await make_core(world, reranker=BuggyReranker(), cf=False).recommend(
            RecommendRequest(query="4", k=5, rerank=True)
        )


async def test_the_deadline_counts_from_arrival_and_reaches_the_reranker(world):
    reranker = ReverseReranker()
    core = make_core(world, reranker=reranker, cf=False)
    arrived = time.perf_counter() - 0.5  # queued half a second before the core saw it
    before = time.time()
    await core.recommend(RecommendRequest(query="4", k=5, rerank=True, deadline_ms=2000), arrived)
    assert reranker.deadlines[0] == pytest.approx(before + 1.5, abs=0.2)


async def test_no_reranker_deployed_is_degraded(world):
    answer = await make_core(world).recommend(
        RecommendRequest(query="4", k=3, rerank=True, explain=True)
    )
    assert answer.degraded == ["rerank", "explain"]


ANN_ONLY = FusionWeights(ann=1.0, item_knn=0.0, als=0.0, popularity=0.0)


async def test_fusion_weights_change_the_order(world):
    # Items 2 and 3 were taken with item 1 (by u1 and u2); their vectors are random, so
    # only a collaborative weight puts them first.
    vectors = world[0]
    req = RecommendRequest(history=["1"], k=10)
    nearest = await make_core(world, fusion=ANN_ONLY).recommend(req)
    exact = [str(i + 1) for i in np.argsort(-(vectors @ vectors[0]))[1:11]]
    assert ids(nearest) == exact
    heavy = FusionWeights(ann=0.1, item_knn=1.0, als=0.0, popularity=0.0)
    fused = await make_core(world, fusion=heavy).recommend(req)
    assert set(ids(fused)[:2]) == {"2", "3"}  # the co-taken items lead
    assert all("cf" in i.sources for i in fused.items[:2])


async def test_a_tuned_profile_half_life_replaces_the_configs(world):
    # The same history, two profiles: a half-life of a tenth of a step is the latest item
    # alone; the config's 10 steps weighs the three items nearly alike.
    vectors = world[0]
    req = RecommendRequest(history=["1", "2", "3"], k=10)

    def nearest_to(profile):
        order = [str(i + 1) for i in np.argsort(-(vectors @ profile))]
        return [i for i in order if i not in req.history][:10]

    latest = await make_core(
        world, fusion=dataclasses.replace(ANN_ONLY, profile_half_life=0.1)
    ).recommend(req)
    assert ids(latest) == nearest_to(user_profile(vectors[:3], 0.1))
    assert ids(latest)[:3] == nearest_to(vectors[2])[:3]
    lasting = await make_core(world, fusion=ANN_ONLY).recommend(req)
    assert ids(lasting) == nearest_to(user_profile(vectors[:3], 10.0))
    assert ids(lasting) != ids(latest)


async def test_popularity_weight_lifts_popular_candidates(world):
    # "1" is the most popular item (2 users). Pick a history item (taken by nobody, so no
    # collaborative signal) whose nearest items include "1", but low down.
    vectors = world[0]
    rank_of_1 = [int(np.flatnonzero(np.argsort(-(vectors @ q)) == 0)[0]) for q in vectors]
    liked = next(q for q, r in enumerate(rank_of_1) if 10 <= r < 40 and q > 3)
    req = RecommendRequest(history=[str(liked + 1)], k=50)
    plain = await make_core(world, fusion=ANN_ONLY).recommend(req)
    assert ids(plain).index("1") >= 10
    popular = FusionWeights(ann=0.1, item_knn=0.0, als=0.0, popularity=10.0)
    lifted = await make_core(world, fusion=popular).recommend(req)
    assert ids(lifted)[0] == "1"


async def test_a_query_outweighs_popularity(world):
    # Tuned history weights may lean on popularity; a free-text query still gets its
    # nearest items in cosine order.
    vectors = world[0]
    popular = FusionWeights(ann=0.1, item_knn=0.25, als=0.0, popularity=10.0)
    answer = await make_core(world, fusion=popular).recommend(RecommendRequest(query="7", k=10))
    exact = [str(i + 1) for i in np.argsort(-(vectors @ vectors[7]))[:10]]
    assert ids(answer) == exact


async def test_als_candidates_join_with_their_source(world):
    vectors, _, knn = world
    log = pa.table(
        {"user_id": ["a", "a", "b", "b", "c", "c"], "item_id": ["1", "7", "1", "7", "5", "9"]}
    )
    als = AlsModel.fit(log, knn.item_ids, factors=4)
    weights = FusionWeights(ann=0.01, item_knn=0.0, als=1.0, popularity=0.0)
    answer = await make_core(world, als=als, fusion=weights).recommend(
        RecommendRequest(history=["1"], k=3)
    )
    assert ids(answer)[0] == "7" and "als" in answer.items[0].sources


async def test_sequential_candidates_join_with_their_source_in_order(world):
    _, _, knn = world
    # Everyone watches 10 → 20 → 30 → 40 in order: after 10 comes 20, after 10 and 20, 30.
    users = [f"u{n}" for n in range(30) for _ in range(4)]
    items = ["10", "20", "30", "40"] * 30
    tiny = {"max_len": 4, "dim": 16, "heads": 2, "blocks": 1, "lr": 1e-2, "progress": False}
    model = SequentialModel.fit(
        pa.table({"user_id": users, "item_id": items}), knn.item_ids, epochs=40, **tiny
    )
    weights = FusionWeights(**{**dict.fromkeys(FEATURES, 0.0), "ann": 0.01, "sequential": 1.0})
    core = make_core(world, sequential=model, fusion=weights)
    first = await core.recommend(RecommendRequest(history=["10"], k=3))
    assert ids(first)[0] == "20" and "sequential" in first.items[0].sources
    second = await core.recommend(RecommendRequest(history=["10", "20"], k=3))
    assert ids(second)[0] == "30" and "20" not in ids(second)
    pool = {p.item_id: p for p in await core.candidate_pool(RecommendRequest(history=["10"]))}
    assert pool["20"].features[FEATURES.index("sequential")] == 1.0  # the favourite
    # Without the model the feature is 0 and the order is the cosine's.
    plain = await make_core(world, fusion=weights).candidate_pool(RecommendRequest(history=["10"]))
    assert all(p.features[FEATURES.index("sequential")] == 0.0 for p in plain)


async def test_ease_candidates_join_with_their_source_scored_by_recency(world):
    _, _, knn = world
    # Whoever took 1 took 7; whoever took 3 took 9. The latest history item leads EASE.
    log = pa.table(
        {
            "user_id": ["a", "a", "b", "b", "c", "c", "d", "d"],
            "item_id": ["1", "7", "1", "7", "3", "9", "3", "9"],
        }
    )
    ease = EaseModel.fit(log, knn.item_ids, lam=0.5)
    weights = FusionWeights(ann=0.01, item_knn=0.0, als=0.0, popularity=0.0, ease=1.0)
    core = make_core(world, ease=ease, fusion=weights)
    answer = await core.recommend(RecommendRequest(history=["3", "1"], k=3))
    assert ids(answer)[:2] == ["7", "9"] and "ease" in answer.items[0].sources
    answer = await core.recommend(RecommendRequest(history=["1", "3"], k=3))
    assert ids(answer)[:2] == ["9", "7"]
    pool = {p.item_id: p for p in await core.candidate_pool(RecommendRequest(history=["1"]))}
    assert pool["7"].features[FEATURES.index("ease")] == 1.0  # normalised to the best


async def test_candidate_pool_exposes_features_before_ordering(world):
    core = make_core(world)
    pool = await core.candidate_pool(RecommendRequest(history=["1"], k=10))
    by_id = {p.item_id: p for p in pool}
    assert "1" not in by_id and {"2", "3"} <= by_id.keys()
    assert by_id["2"].features[1] == 1.0  # the best item-kNN score is normalised to 1
    assert "cf" in by_id["2"].sources and len(pool) >= 50


async def test_tuned_rerank_weight_zero_skips_the_llm(world):
    reranker = ReverseReranker()
    off = FusionWeights(rerank=0.0)
    answer = await make_core(world, reranker=reranker, fusion=off, cf=False).recommend(
        RecommendRequest(query="4", k=5, rerank=True)
    )
    assert not answer.reranked and answer.degraded == [] and reranker.weights == []


async def test_tuned_rerank_weight_reaches_the_reranker(world):
    reranker = ReverseReranker()
    core = make_core(world, reranker=reranker, fusion=FusionWeights(rerank=0.3), cf=False)
    answer = await core.recommend(RecommendRequest(query="4", k=5, rerank=True))
    assert answer.reranked and reranker.weights == [0.3]
    await make_core(world, reranker=reranker, cf=False).recommend(
        RecommendRequest(query="4", k=5, rerank=True)
    )
    assert reranker.weights == [0.3, None]  # untuned: the reranker's own weight


def inventing_engine() -> ScriptedEngine:
    """A scripted LLM whose reason for the best item names a title that exists nowhere."""

    def reply(messages):
        if "may like A:" in messages[1]["content"]:
            return ' it is just like "The Invented Blockbuster" everyone loves.'
        return " it tells a similar story with the same kind of characters."

    return ScriptedEngine({" A": -0.1, " B": -2.0}, reply=reply)


async def test_explanations_name_only_the_request_and_the_catalog(world):
    reranker = RerankerCore(
        RerankerConfig(explain_attempts=1), Path("/nonexistent"), engine=inventing_engine()
    )
    core = make_core(world, reranker=reranker, cf=False)
    answer = await core.answer(RecommendRequest(history=["1", "5"], k=3, explain=True))
    history_titles = {"Item 1", "Item 5"}
    assert answer.grounded.count(False) == 1 and answer.grounded.count(True) == 2
    sources = [i.explanation_source for i in answer.response.items]
    assert sources.count("template") == 1 and sources.count("llm") == 2
    for item, grounded in zip(answer.response.items, answer.grounded, strict=True):
        assert item.explanation and "Invented" not in item.explanation
        quoted = set(re.findall(r'"([^"]+)"', item.explanation))
        assert quoted <= history_titles | {item.title}, item.explanation
        assert grounded is not None


async def test_explanations_share_the_rerank_prompt_with_its_lettered_candidates(world):
    engine = ScriptedEngine({" B": -0.1, " A": -2.0}, reply=lambda m: " it is a story.")
    config = RerankerConfig(max_candidates=5, rerank_weight=1.0, explain_attempts=1)
    reranker = RerankerCore(config, Path("/x"), engine=engine)
    core = make_core(world, reranker=reranker, cf=False)
    answer = await core.recommend(RecommendRequest(query="4", k=3, rerank=True, explain=True))
    assert answer.reranked and answer.degraded == []
    rerank_prompt, *explain_prompts = engine.prompts
    shared = rerank_prompt[1]["content"].rsplit("\n", 1)[0]
    assert len(explain_prompts) == 3
    assert all(p[1]["content"].startswith(shared) for p in explain_prompts)
    # The reranked best (letter B of the rerank prompt) is explained as B.
    assert "may like B:" in explain_prompts[0][1]["content"]


def test_default_fusion_is_the_router_config():
    assert FusionWeights.from_config(RouterConfig()) == FusionWeights()
    assert FusionWeights.from_config(RouterConfig(cf_weight=0.9)).item_knn == 0.9


async def test_reranker_blends_at_the_weight_the_router_passes():
    engine = ScriptedEngine({" A": -3.0, " B": -0.1})
    reranker = RerankerCore(RerankerConfig(rerank_weight=0.0), Path("/x"), engine=engine)
    context = PromptContext(
        ["Item 9"], [[]], None, [Candidate("1", "Item 1"), Candidate("2", "Item 2")]
    )
    assert [i for i, _ in (await reranker.rerank(context, [0.9, 0.8])).order] == [0, 1]
    outcome = await reranker.rerank(context, [0.9, 0.8], 1.0)
    assert [i for i, _ in outcome.order] == [1, 0]


def looked_up(core) -> list[str]:
    """Every id the core asked its shards for, since the last call (then forgotten)."""
    asked = [i for shard in core.shards for i in shard.looked_up]
    for shard in core.shards:
        shard.looked_up.clear()
    return sorted(asked)


async def test_a_returning_users_history_comes_from_the_row_cache(world):
    core = make_core(world, histories={"u1": ["1", "2", "3"]})
    first = await core.recommend(RecommendRequest(user_id="u1", k=5))
    assert {"1", "2", "3"} <= set(looked_up(core))  # the history, and the candidates' rows
    again = await core.recommend(RecommendRequest(user_id="u1", k=5))
    assert looked_up(core) == []  # every row it needs is cached
    assert ids(again) == ids(first)
    core.forget_items(["2"])  # an upsert or delete of item 2 through this replica
    await core.recommend(RecommendRequest(user_id="u1", k=5))
    assert looked_up(core) == ["2"]


async def test_a_query_only_request_gets_its_rows_with_the_search(world):
    # No history, no cache: the shown items' rows came with the one search call per replica.
    off = AppConfig(router=RouterConfig(item_cache_size=0))
    core = make_core(world, cf=False, config=off)
    answer = await core.recommend(RecommendRequest(query="9", k=10))
    assert looked_up(core) == [] and len(answer.items) == 10
    rows = {i: hit for shard in world[1] for i, (hit, _) in shard.lookup(ids(answer)).items()}
    assert [i.title for i in answer.items] == [rows[i].title for i in ids(answer)]
    # With a history the pool holds proposals the search does not rank: rows are looked up.
    with_history = make_core(world, config=off, histories={"u1": ["1", "2"]})
    await with_history.recommend(RecommendRequest(user_id="u1", query="9", k=10))
    assert looked_up(with_history)


async def test_each_shard_is_sent_only_the_seen_items_it_owns(world):
    history = [str(i) for i in range(1, 41)]
    core = make_core(world, histories={"heavy": history})
    answer = await core.recommend(RecommendRequest(user_id="heavy", k=10))
    assert not set(history) & set(ids(answer))
    for s, shard in enumerate(core.shards):
        (sent,) = shard.excluded
        assert sorted(sent) == sorted(i for i in history if shard_of(i, 4) == s)


async def test_unknown_items_are_not_cached_and_the_cache_can_be_off(world):
    core = make_core(world)
    for _ in range(2):
        with pytest.raises(NotFound):
            await core.recommend(RecommendRequest(history=["1", "no-such-item"], k=5))
        assert "no-such-item" in looked_up(core)  # asked every time, never remembered
    off = make_core(world, config=AppConfig(router=RouterConfig(item_cache_size=0)))
    assert off.item_rows is None
    for _ in range(2):
        await off.recommend(RecommendRequest(history=["1"], k=5))
        assert "1" in looked_up(off)


def test_top_positions_match_a_stable_full_sort_and_gather_reads_known_ids():
    from deployments.router.core import _gather
    from retrieval.user_scores import top_positions

    rng = np.random.default_rng(5)
    for _ in range(50):
        scores = rng.integers(0, 6, size=int(rng.integers(1, 300))).astype(np.float32) / 5
        for n in (0, 1, 7, 50, 400):
            expected = np.argsort(-scores, kind="stable")[:n]
            np.testing.assert_array_equal(top_positions(scores, n), expected)
    values = np.array([0.5, 0.25, 1.0])
    got = _gather(values, {"a": 0, "b": 1, "c": 2}, ["c", "x", "a", "c"])
    np.testing.assert_array_equal(got, [1.0, 0.0, 0.5, 1.0])


async def test_with_every_shard_down_a_known_user_is_answered_from_cached_rows(world):
    weights = FusionWeights(ann=0.1, item_knn=1.0, als=0.0, popularity=0.0, ease=0.0)
    core = make_core(world, fusion=weights)
    # The first answer shows the item-kNN proposal ("3"), so its row is in the cache.
    first = await core.recommend(RecommendRequest(history=["1", "2"], k=5, rerank=False))
    assert first.degraded == [] and "3" in {i.item_id for i in first.items}
    for shard in core.shards:
        shard.fail = True
    answer = await core.recommend(RecommendRequest(history=["1", "2"], k=5, rerank=False))
    assert answer.degraded == [f"shard-{s}" for s in range(4)]
    assert [i.item_id for i in answer.items] == ["3"] and answer.items[0].sources == ["cf"]
    with pytest.raises(DeadlineExceeded, match="no shard answered"):
        await core.recommend(RecommendRequest(query="3", k=5, rerank=False))


def _farthest_first_model():
    """A real learned fusion trained where the target is always the pool's lowest cosine."""
    from retrieval.ltr import LearnedFusion

    rng = np.random.default_rng(0)
    pools = []
    for _ in range(60):
        features = rng.random((30, len(FEATURES)))
        pools.append((features, int(np.argmin(features[:, 0])), 5))
    return LearnedFusion.train(pools, rounds=50)


async def test_a_learned_fusion_orders_history_requests_and_the_weights_order_queries(world):
    vectors = world[0]
    learned = FusionWeights(ann=1.0, item_knn=0.0, als=0.0, popularity=0.0, ease=0.0)
    core = make_core(world, fusion=dataclasses.replace(learned, learned=_farthest_first_model()))
    pool = await core.candidate_pool(RecommendRequest(history=["1"]))
    answer = await core.recommend(RecommendRequest(history=["1"], k=3))
    cosine = {p.item_id: p.features[0] for p in pool}
    assert ids(answer)[0] == min(cosine, key=cosine.get)  # the model's order, not the weights'
    assert core.query_fusion.learned is None
    answer = await core.recommend(RecommendRequest(query="7", k=10))
    assert ids(answer) == [str(i + 1) for i in np.argsort(-(vectors @ vectors[7]))[:10]]
