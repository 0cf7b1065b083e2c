"""The catalog rows a router replica keeps, used while their shard has not changed.

A recommendation needs the rows (title, text, categories) and vectors of the
user's history and of the items it may show. Asking the shards for them on every
request would double the calls a request makes, so a router replica keeps them
(`router.item_cache_size` rows). Each row is stored with its shard's
`ShardVersion` as the router knew it before asking for the row, and every search
answer (`Found.versions`) tells the router its shards' current versions. When a
shard's version moves (an upsert or delete through any router replica, a reload),
its rows kept under an older version are no longer used: the next request that
needs one asks the shard again. A row is also dropped when it is older than
`router.item_cache_ttl_s`, a bound for shards that report no version.

Versions only move forward: an answer read before a later one (two searches in
flight) cannot make older rows current again. Until the next search answer comes
back, a request may still use a row that changed since the last one: the history
of the first request after a write can be that one answer behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
from cachetools import TTLCache

from retrieval.shards import Hit, ShardVersion

__all__ = ["Row", "RowCache"]

Row = tuple[Hit, np.ndarray]
"""A catalog row and its stored vector, as a shard's `lookup` answers them."""


class RowCache:
    """Up to `size` rows, each used while its shard's version is the one it was stored under
    and for at most `ttl_s`; `shard_of` maps an item id to the shard that owns it."""

    def __init__(self, size: int, ttl_s: float, shard_of: Callable[[str], int]) -> None:
        self._rows: TTLCache[str, tuple[Row, int, ShardVersion | None]] = TTLCache(size, ttl_s)
        self._shard_of = shard_of
        self._versions: dict[int, ShardVersion] = {}

    def versions(self) -> dict[int, ShardVersion]:
        """The shards' versions as known now: what rows asked for from here on are stored under."""
        return dict(self._versions)

    def learn(self, versions: Mapping[int, ShardVersion] | None) -> None:
        """Take the versions a search answer carried (the newer of each)."""
        for shard, version in (versions or {}).items():
            known = self._versions.get(shard)
            if known is None or version > known:
                self._versions[shard] = version

    def get(self, item_id: str) -> Row | None:
        """The row of `item_id` when it is kept under its shard's current version."""
        entry = self._rows.get(item_id)
        if entry is None:
            return None
        row, shard, version = entry
        if version != self._versions.get(shard):
            del self._rows[item_id]  # its shard changed since: ask again
            return None
        return row

    def put(self, rows: Mapping[str, Row], versions: Mapping[int, ShardVersion]) -> None:
        """Keep `rows`, read from shards at least as new as `versions` (the search answer's, or
        `versions()` taken before the lookup that fetched them)."""
        for item_id, row in rows.items():
            shard = self._shard_of(item_id)
            self._rows[item_id] = (row, shard, versions.get(shard))

    def forget(self, item_ids: Iterable[str]) -> None:
        """Drop the rows of items that changed through this replica."""
        for item_id in item_ids:
            self._rows.pop(item_id, None)

    def __len__(self) -> int:
        return len(self._rows)
