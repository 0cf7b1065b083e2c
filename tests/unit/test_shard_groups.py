"""Several shards served by one retriever replica: the layout, the group core, the router over it.

The shards are real FAISS shards on disk; the replicas are the group cores
called in-process (the Serve deployment around them is exercised in
tests/integration/test_retriever_live.py).
"""

import asyncio
import pickle

import numpy as np
import pytest

from deployments.errors import BackendFailed, BackendUnavailable
from deployments.retriever.core import ShardGroupCore, ShardRetrieverCore
from deployments.router.core import RouterCore
from deployments.router.items import ItemStore
from deployments.router.schemas import ItemIn, RecommendRequest
from retrieval.config import AppConfig, RetrieverConfig
from retrieval.shards import Item, ShardLayout, shard_of
from tests.factories import make_shards

N_SHARDS = 5


@pytest.fixture
def index(tmp_path):
    path = tmp_path / "index"
    _, vectors, _ = make_shards(path, n=300, dim=16, n_shards=N_SHARDS)
    return path, vectors


def test_layout_gives_every_shard_to_exactly_one_replica():
    layout = ShardLayout(N_SHARDS, per_replica=2)
    assert layout.n_replicas == 3
    assert [layout.shards_of(g) for g in range(3)] == [[0, 1], [2, 3], [4]]
    assert layout.names_of(2) == ["shard-4"]
    for item_id in (str(i) for i in range(200)):
        shard = shard_of(item_id, N_SHARDS)
        assert layout.shard(item_id) == shard
        assert shard in layout.shards_of(layout.replica(item_id))
    assert ShardLayout(N_SHARDS, per_replica=8).n_replicas == 1
    assert ShardLayout(N_SHARDS).shards_of(3) == [3]
    with pytest.raises(ValueError, match="bad shard layout"):
        ShardLayout(0, 1)


def test_a_group_searches_its_shards_as_their_merge(index):
    path, vectors = index
    config = RetrieverConfig()
    group = ShardGroupCore(path, [1, 2, 3], N_SHARDS, config)
    alone = [ShardRetrieverCore(path, s, config) for s in (1, 2, 3)]
    query = vectors[7]
    truth = sorted(
        (hit for core in alone for hit in core.search_ids(query, 10).nearest),
        key=lambda h: -h.score,
    )[:10]
    assert [h.item_id for h in group.search_ids(query, 10).nearest] == [h.item_id for h in truth]
    assert [h.item_id for h in group.search(query, 10)] == [h.item_id for h in truth]
    # Seen items are excluded by the shard that owns them; ids of other groups are ignored.
    seen = [h.item_id for h in truth[:4]] + ["not-here"]
    after = [h.item_id for h in group.search_ids(query, 10, exclude=seen).nearest]
    assert not set(seen) & set(after) and len(after) == 10
    owned = [str(i) for i in range(1, 301) if shard_of(str(i), N_SHARDS) in (1, 2, 3)]
    foreign = [str(i) for i in range(1, 301) if shard_of(str(i), N_SHARDS) == 0]
    assert set(group.lookup(owned[:20] + foreign[:5])) == set(owned[:20])


def test_a_group_writes_each_item_to_its_own_shard_and_refuses_foreign_ones(index):
    path, _ = index
    group = ShardGroupCore(path, [0, 1], N_SHARDS, RetrieverConfig())
    mine = [f"n{i}" for i in range(50) if shard_of(f"n{i}", N_SHARDS) in (0, 1)][:4]
    other = next(f"n{i}" for i in range(50) if shard_of(f"n{i}", N_SHARDS) == 4)
    vectors = np.eye(16, dtype=np.float32)[: len(mine)]
    group.upsert([Item(item_id=i, title=i) for i in mine], vectors)
    for item_id in mine:
        assert item_id in group.cores[shard_of(item_id, N_SHARDS)].shard.position
    with pytest.raises(ValueError, match="belongs to shard 4"):
        group.upsert([Item(item_id=other, title="x")], vectors[:1])
    assert sorted(group.delete([*mine[:2], other])) == sorted(mine[:2])
    assert sum(s["live"] for s in group.stats()) == sum(
        ShardRetrieverCore(path, s, RetrieverConfig()).stats()["live"] for s in (0, 1)
    )
    group.check_health()


def test_a_shards_version_moves_with_each_write_and_reload_and_comes_with_its_answers(index):
    path, vectors = index
    group = ShardGroupCore(path, [0, 1], N_SHARDS, RetrieverConfig())

    def versions():
        return group.search_ids(vectors[0], 5).versions

    first = versions()
    assert set(first) == {0, 1} and versions() == first  # a search changes nothing
    mine = next(f"n{i}" for i in range(50) if shard_of(f"n{i}", N_SHARDS) == 1)
    group.upsert([Item(item_id=mine, title="new")], vectors[:1])
    after = versions()
    assert after[0] == first[0] and after[1] > first[1]
    group.delete(["not-here"])  # deleted nothing
    assert versions() == after
    group.delete([mine])
    deleted = versions()
    assert deleted[1] > after[1]
    group.reload()
    reloaded = versions()
    assert reloaded[0] > first[0] and reloaded[1] > deleted[1]
    found = group.search_ids(vectors[0], 5, rows_for=2)
    assert pickle.loads(pickle.dumps(found)).versions == found.versions == reloaded


class GroupClient:
    """A retriever replica called in-process; `down` makes it fail like a dead replica."""

    def __init__(self, core: ShardGroupCore, down: bool = False):
        self.core, self.down = core, down
        self.calls = 0

    async def _call(self, fn, *args):
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise BackendUnavailable("ShardRetriever did not answer")
        return fn(*args)

    async def search_ids(self, vector, k, exclude, categories, also, rows_for=0):
        return await self._call(
            self.core.search_ids, vector, k, exclude, categories, also, rows_for
        )

    async def lookup(self, item_ids):
        return await self._call(self.core.lookup, item_ids)

    async def upsert(self, items, vectors):
        return await self._call(self.core.upsert, items, vectors)

    async def delete(self, item_ids):
        return await self._call(self.core.delete, item_ids)


def router_over(path, vectors, per_replica, down=()):
    layout = ShardLayout(N_SHARDS, per_replica)
    clients = [
        GroupClient(
            ShardGroupCore(path, layout.shards_of(g), N_SHARDS, RetrieverConfig()), g in down
        )
        for g in range(layout.n_replicas)
    ]

    async def encode(text):
        return vectors[int(text)]

    return RouterCore(AppConfig(), encode=encode, shards=clients, layout=layout), clients


async def test_the_router_answers_the_same_whatever_the_layout_with_one_call_per_replica(index):
    path, vectors = index
    history = [str(i) for i in range(1, 60, 3)]
    answers = []
    for per_replica in (1, 2, N_SHARDS):
        core, clients = router_over(path, vectors, per_replica)
        req = RecommendRequest(history=history, query="5", k=10, rerank=False)
        answer = await core.recommend(req)
        answers.append([(i.item_id, i.score) for i in answer.items])
        assert answer.degraded == []
        # One history lookup and one search per replica (the rows of the hits are cached).
        assert all(1 <= c.calls <= 3 for c in clients), [c.calls for c in clients]
    assert answers[0] == answers[1] == answers[2]
    assert not set(history) & {item_id for item_id, _ in answers[0]}


async def test_a_write_through_another_router_replica_shows_from_the_next_answer_on(index):
    path, vectors = index
    core, clients = router_over(path, vectors, per_replica=N_SHARDS)
    req = RecommendRequest(history=["1", "4"], query="5", k=10, rerank=False)
    first = await core.recommend(req)
    await core.recommend(req)  # the history, kept before the first answer told the versions
    clients[0].calls = 0
    assert [i.item_id for i in (await core.recommend(req)).items] == [
        i.item_id for i in first.items
    ]
    assert clients[0].calls == 1  # the search alone: every row came from the cache
    # Another router replica renames a shown item: the write reaches the shard, not this router.
    shown = first.items[0].item_id
    group = clients[0].core
    vector = group.lookup([shown])[shown][1]
    group.upsert([Item(item_id=shown, title="renamed")], vector[None])
    again = await core.recommend(req)
    assert {i.item_id: i.title for i in again.items}[shown] == "renamed"


async def test_a_failed_replica_names_each_of_its_shards(index):
    path, vectors = index
    core, _ = router_over(path, vectors, per_replica=2, down={1})
    answer = await core.recommend(RecommendRequest(query="5", k=10, rerank=False))
    assert answer.degraded == ["shard-2", "shard-3"]
    assert len(answer.items) == 10
    assert all(shard_of(i.item_id, N_SHARDS) not in (2, 3) for i in answer.items)


async def test_catalog_calls_go_to_the_replica_of_the_item_and_name_its_shard(index):
    path, vectors = index
    layout = ShardLayout(N_SHARDS, per_replica=2)
    clients = [
        GroupClient(ShardGroupCore(path, layout.shards_of(g), N_SHARDS, RetrieverConfig()), g == 2)
        for g in range(layout.n_replicas)
    ]

    async def encode(text):
        return vectors[len(text) % len(vectors)]

    store = ItemStore(AppConfig(), encode=encode, shards=clients, layout=layout)
    on_three = next(str(i) for i in range(1, 301) if shard_of(str(i), N_SHARDS) == 3)
    assert (await store.find(on_three)).item_id == on_three
    assert clients[1].calls == 1 and clients[0].calls == 0
    on_four = next(str(i) for i in range(1, 301) if shard_of(str(i), N_SHARDS) == 4)
    with pytest.raises(BackendFailed, match="shard-4 did not answer"):
        await store.find(on_four)
    new = [f"z{i}" for i in range(40)]
    with pytest.raises(BackendFailed, match=r"^shard-4 did not take"):
        await store.upsert([ItemIn(item_id=i, title=i) for i in new])
    landed = [i for i in new if shard_of(i, N_SHARDS) != 4]
    for item_id in landed:
        assert (await store.find(item_id)).item_id == item_id


def test_a_shard_scores_the_ids_it_is_asked_about_without_their_rows(index):
    path, vectors = index
    core = ShardRetrieverCore(path, 2, RetrieverConfig())
    mine = [i for i in core.shard.item_ids if shard_of(i, N_SHARDS) == 2][:5]
    found = core.search_ids(vectors[0], 5, also=[*mine, "not-here"])
    assert [s.item_id for s in found.scored] == mine
    for scored in found.scored:
        assert scored.score == pytest.approx(float(vectors[int(scored.item_id) - 1] @ vectors[0]))
    # The category filter applies to them as to the search.
    cats = core.search_ids(vectors[0], 5, categories=["Drama"], also=mine).scored
    assert {s.item_id for s in cats} == {i for i in mine if (int(i) - 1) % 4 == 0}


async def test_rows_are_fetched_only_for_what_can_be_shown(index):
    path, vectors = index
    core, clients = router_over(path, vectors, per_replica=N_SHARDS)
    looked_up = []
    lookup = clients[0].core.lookup
    clients[0].core.lookup = lambda ids: looked_up.append(list(ids)) or lookup(ids)
    history = [str(i) for i in range(1, 40, 2)]
    answer = await core.recommend(RecommendRequest(history=history, k=5, rerank=False))
    assert len(answer.items) == 5
    history_lookup, candidate_rows = looked_up
    assert sorted(history_lookup) == sorted(history) and len(candidate_rows) == 5
    # The history was kept before any search told the shards' versions: asked once more.
    pool = await core.candidate_pool(RecommendRequest(history=history, k=5))
    assert len(pool) > 5 and looked_up[2:] == [history_lookup]
    # The pool for tuning needs no rows: its history comes from the row cache, and no
    # candidate row is asked for.
    assert len(await core.candidate_pool(RecommendRequest(history=history, k=5))) == len(pool)
    assert len(looked_up) == 3
