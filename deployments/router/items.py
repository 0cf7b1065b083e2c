"""The catalog routes' work (`/v1/items`, the item check of `/v1/feedback`), without Ray.

Every item lives in exactly one shard, `shard_of(item_id, n_shards)`, served by
one retriever replica (`ShardLayout`). A lookup or delete goes to that replica
only and waits at most `router.backend_timeout_s`; a replica that does not
answer in time is a 502 naming the item's shard (`shard-N`), an item its shard
does not hold is a 404. An upsert encodes every item, then writes each
replica's part concurrently; the shards of replicas that did not answer are
named in one 502, and the others keep what they took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np

from deployments.errors import BackendFailed, BackendUnavailable, NotFound
from deployments.router.core import EncodeFn
from deployments.router.schemas import ItemIn
from retrieval.build import item_texts
from retrieval.config import AppConfig
from retrieval.shards import Hit, Item, ShardLayout

__all__ = ["ItemShard", "ItemStore"]

T = TypeVar("T")


class ItemShard(Protocol):
    """One retriever replica's catalog calls as the router sees them (a Serve handle or a core).

    `lookup` returns the rows of the ids it holds (the rest are absent); `upsert`
    adds or replaces items (row i of `vectors` is item i's vector) and answers once
    the change is durable and searchable; `delete` returns the ids it held. A shard
    that does not answer raises `BackendUnavailable`.
    """

    async def lookup(self, item_ids: list[str]) -> dict[str, tuple[Hit, np.ndarray]]: ...

    async def upsert(self, items: list[Item], vectors: np.ndarray) -> int: ...

    async def delete(self, item_ids: list[str]) -> list[str]: ...


class ItemStore:
    """Reads, writes and deletes catalog items in their owning shards (see the module docstring).

    `shards[g]` is retriever replica g of `layout` (default: one shard each). `on_change`
    hears the ids of every upsert or delete sent (so a cache of rows can drop them),
    whether or not every shard took it.
    """

    def __init__(
        self,
        config: AppConfig,
        *,
        encode: EncodeFn,
        shards: Sequence[ItemShard],
        on_change: Callable[[list[str]], None] | None = None,
        layout: ShardLayout | None = None,
    ) -> None:
        self.config = config
        self.encode = encode
        self.shards = list(shards)
        self.layout = layout if layout is not None else ShardLayout(len(self.shards))
        self.on_change = on_change or (lambda item_ids: None)

    def owner(self, item_id: str) -> int:
        """The number of the shard that holds (or would hold) `item_id`."""
        return self.layout.shard(item_id)

    async def find(self, item_id: str) -> Hit:
        """The stored item from its shard; NotFound (404) when the shard has none."""
        found = await self._within_timeout(item_id, lambda shard: shard.lookup([item_id]))
        if item_id not in found:
            raise NotFound(f"unknown item {item_id!r}", field="item_id")
        return found[item_id][0]

    async def delete(self, item_id: str) -> None:
        """Delete `item_id` from its shard; NotFound (404) when the shard has none."""
        try:
            deleted = await self._within_timeout(item_id, lambda shard: shard.delete([item_id]))
        finally:
            self.on_change([item_id])
        if not deleted:
            raise NotFound(f"unknown item {item_id!r}", field="item_id")

    async def upsert(self, items: Sequence[ItemIn]) -> list[str]:
        """Encode `items` and write each to its owning shard; returns their ids, in order.

        When a shard does not answer, `BackendFailed` (502) names it (the other shards
        kept their part; sending the same items again is safe, an upsert replaces). Any
        other error of a shard passes on as it is.
        """
        texts = item_texts([i.title for i in items], [i.text for i in items])
        vectors = await asyncio.gather(*(self.encode(t) for t in texts))
        by_replica: dict[int, list[int]] = {}
        for n, item in enumerate(items):
            by_replica.setdefault(self.layout.replica(item.item_id), []).append(n)
        results = await asyncio.gather(
            *(
                self.shards[g].upsert(
                    [Item(**items[n].model_dump()) for n in rows],
                    np.stack([vectors[n] for n in rows]),
                )
                for g, rows in by_replica.items()
            ),
            return_exceptions=True,
        )
        self.on_change([i.item_id for i in items])
        failed = []
        for rows, result in zip(by_replica.values(), results, strict=True):
            if isinstance(result, BackendUnavailable):
                shards = dict.fromkeys(self.owner(items[n].item_id) for n in rows)
                failed += [f"shard-{s}" for s in sorted(shards)]
            elif isinstance(result, BaseException):
                raise result
        if failed:
            raise BackendFailed(
                f"{', '.join(failed)} did not take the items (the other shards did); "
                "sending the request again is safe"
            )
        return [i.item_id for i in items]

    async def _within_timeout(self, item_id: str, call: Callable[[ItemShard], Awaitable[T]]) -> T:
        """`call` on the replica of `item_id`, waited on at most `router.backend_timeout_s`."""
        try:
            replica = self.shards[self.layout.replica(item_id)]
            return await asyncio.wait_for(call(replica), self.config.router.backend_timeout_s)
        except (BackendUnavailable, TimeoutError) as exc:
            raise BackendFailed(f"shard-{self.owner(item_id)} did not answer") from exc
