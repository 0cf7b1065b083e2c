"""`ItemStore`: item lookups, upserts and deletes routed to their owning shards, without Ray."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from deployments.errors import BackendFailed, BackendUnavailable, NotFound
from deployments.router.items import ItemStore
from deployments.router.schemas import ItemIn
from retrieval.build import item_texts
from retrieval.config import AppConfig, RouterConfig
from retrieval.shards import Hit, Item, shard_of

N_SHARDS = 3
TIMEOUT_S = 0.05


class MemoryShard:
    """A shard in a dict; `mode` makes it hang ("hang"), not answer ("down") or crash ("bug")."""

    def __init__(self, number: int, mode: str = "ok") -> None:
        self.number, self.mode = number, mode
        self.rows: dict[str, tuple[Item, np.ndarray]] = {}
        self.calls: list[str] = []

    async def _answer(self, method: str) -> None:
        self.calls.append(method)
        if self.mode == "hang":
            await asyncio.sleep(60)
        if self.mode == "down":
            raise BackendUnavailable(f"ShardRetriever-{self.number} did not answer")
        if self.mode == "bug":
            raise KeyError("a bug in the shard, not an outage")

    async def lookup(self, item_ids: list[str]) -> dict[str, tuple[Hit, np.ndarray]]:
        await self._answer("lookup")
        return {
            i: (Hit(i, 1.0, item.title, item.text, item.categories), vector)
            for i in item_ids
            if i in self.rows
            for item, vector in [self.rows[i]]
        }

    async def upsert(self, items: list[Item], vectors: np.ndarray) -> int:
        await self._answer("upsert")
        assert vectors.shape == (len(items), 4)
        for item, vector in zip(items, vectors, strict=True):
            self.rows[item.item_id] = (item, vector)
        return len(self.rows)

    async def delete(self, item_ids: list[str]) -> list[str]:
        await self._answer("delete")
        return [i for i in item_ids if self.rows.pop(i, None) is not None]


async def encode(text: str) -> np.ndarray:
    """A vector that says which text it came from: its length and first characters."""
    return np.array([len(text), ord(text[0]), ord(text[-1]), 1.0], dtype=np.float32)


def make_store(modes: dict[int, str] | None = None) -> tuple[ItemStore, list[MemoryShard]]:
    shards = [MemoryShard(s, (modes or {}).get(s, "ok")) for s in range(N_SHARDS)]
    config = AppConfig(router=RouterConfig(backend_timeout_s=TIMEOUT_S))
    return ItemStore(config, encode=encode, shards=shards), shards


def make_items(n: int) -> list[ItemIn]:
    return [
        ItemIn(item_id=f"it{i}", title=f"Title {i}", text=f"story {i}", categories=[f"c{i % 2}"])
        for i in range(n)
    ]


def id_owned_by(shard: int) -> str:
    return next(f"x{i}" for i in range(1000) if shard_of(f"x{i}", N_SHARDS) == shard)


async def test_upsert_writes_each_item_to_its_owning_shard_with_its_vector():
    store, shards = make_store()
    items = make_items(20)
    assert await store.upsert(items) == [i.item_id for i in items]
    for shard in shards:
        owned = {i.item_id for i in items if shard_of(i.item_id, N_SHARDS) == shard.number}
        assert set(shard.rows) == owned
        assert shard.calls == ["upsert"]  # one write per shard, not one per item
    assert {s.number for s in shards if s.rows} == set(range(N_SHARDS))
    texts = item_texts([i.title for i in items], [i.text for i in items])
    for item, text in zip(items, texts, strict=True):
        stored, vector = shards[shard_of(item.item_id, N_SHARDS)].rows[item.item_id]
        assert stored == Item(**item.model_dump())
        np.testing.assert_array_equal(vector, await encode(text))


async def test_an_upserted_item_is_found_in_its_shard_only():
    store, shards = make_store()
    await store.upsert(make_items(6))
    for s in shards:
        s.calls.clear()
    hit = await store.find("it4")
    assert (hit.item_id, hit.title, hit.text, hit.categories) == (
        "it4",
        "Title 4",
        "story 4",
        ["c0"],
    )
    owner = shard_of("it4", N_SHARDS)
    assert [s.calls for s in shards] == [["lookup"] if s.number == owner else [] for s in shards]


async def test_an_unknown_item_is_404():
    store, _ = make_store()
    with pytest.raises(NotFound) as caught:
        await store.find("nope")
    assert caught.value.status == 404 and caught.value.field == "item_id"
    assert caught.value.message == "unknown item 'nope'"


@pytest.mark.parametrize("mode", ["hang", "down"])
async def test_a_shard_that_does_not_answer_is_502_naming_it(mode):
    bad = 1
    store, _ = make_store({bad: mode})
    started = time.perf_counter()
    for call in (store.find, store.delete):
        with pytest.raises(BackendFailed) as caught:
            await call(id_owned_by(bad))
        assert caught.value.status == 502
        assert caught.value.message == f"shard-{bad} did not answer"
    assert time.perf_counter() - started < 1.0  # bounded by backend_timeout_s, not the hang
    with pytest.raises(NotFound):  # the other shards still answer
        await store.find(id_owned_by(0))


async def test_a_bug_in_a_shard_is_not_turned_into_a_502():
    store, _ = make_store({2: "bug"})
    with pytest.raises(KeyError):
        await store.find(id_owned_by(2))
    with pytest.raises(KeyError):
        await store.upsert(make_items(20))


async def test_an_upsert_names_the_shards_that_failed_and_the_others_keep_their_part():
    store, shards = make_store({0: "down", 2: "down"})
    items = make_items(20)
    with pytest.raises(BackendFailed) as caught:
        await store.upsert(items)
    assert caught.value.status == 502
    named, rest = caught.value.message.split(" did not take the items")
    assert sorted(named.split(", ")) == ["shard-0", "shard-2"]
    assert rest == " (the other shards did); sending the request again is safe"
    assert set(shards[1].rows) == {i.item_id for i in items if shard_of(i.item_id, N_SHARDS) == 1}


async def test_delete_removes_the_item_from_its_shard_and_a_second_delete_is_404():
    store, shards = make_store()
    await store.upsert(make_items(6))
    owner = shards[shard_of("it3", N_SHARDS)]
    await store.delete("it3")
    assert "it3" not in owner.rows
    assert sum(len(s.rows) for s in shards) == 5
    with pytest.raises(NotFound, match="unknown item 'it3'"):
        await store.delete("it3")
    with pytest.raises(NotFound):
        await store.find("it3")


async def test_every_write_sent_is_told_to_on_change_even_when_a_shard_failed():
    heard: list[list[str]] = []
    store, shards = make_store({1: "down"})
    store.on_change = heard.append
    items = make_items(8)
    with pytest.raises(BackendFailed):
        await store.upsert(items)
    assert heard == [[i.item_id for i in items]]
    kept = next(iter(shards[0].rows))
    await store.delete(kept)
    with pytest.raises(NotFound):
        await store.delete("never-there")
    assert heard[1:] == [[kept], ["never-there"]]
