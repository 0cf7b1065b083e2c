"""ShardRetriever cores, without Ray: one FAISS shard, and the shards one replica serves.

`ShardRetrieverCore` answers searches, lookups and changes for one shard.
`ShardGroupCore` holds the shards of one replica (`ShardLayout`): a search runs
on each and is merged here, so the router pays one call for all of them; a
lookup or change goes to the shard that owns each item.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from retrieval.config import SEARCH_KNOBS, RetrieverConfig
from retrieval.merge import merge_top_k
from retrieval.shards import (
    Found,
    Hit,
    IndexIntegrityError,
    Item,
    Shard,
    ShardVersion,
    shard_of,
)

__all__ = [
    "SEARCH_TIME_FIELDS",
    "ShardGroupCore",
    "ShardRetrieverCore",
    "split_config",
]

log = logging.getLogger(__name__)

PROBE_K = 10
SEARCH_TIME_FIELDS = SEARCH_KNOBS | {"snapshot_every", "inline_search_ms"}
"""RetrieverConfig fields a running shard applies in place (Serve `user_config`)."""


def split_config(config: RetrieverConfig) -> tuple[dict, dict]:
    """(constructor args, user_config) of a shard deployment.

    Search-time fields travel in the user_config, so changing only them makes
    Serve call `reconfigure` on the running replica instead of restarting it.
    """
    dumped = config.model_dump()
    search = {k: v for k, v in dumped.items() if k in SEARCH_TIME_FIELDS}
    return {k: v for k, v in dumped.items() if k not in SEARCH_TIME_FIELDS}, search


class ShardRetrieverCore:
    """Loads shard `shard_no` of `index_dir` (verified, change log replayed) and serves it.

    Construction raises `IndexIntegrityError` naming the file when the shard, its
    manifest entry or its change log is missing, corrupt, of another index type
    or of another dimension, so a bad index never serves. `reload` swaps in a
    freshly loaded shard and keeps the old one when loading fails.
    """

    def __init__(
        self,
        index_dir: Path,
        shard_no: int,
        config: RetrieverConfig,
        expected_dim: int | None = None,
    ) -> None:
        faiss.omp_set_num_threads(config.faiss_threads)
        self.index_dir = Path(index_dir)
        self.shard_no = shard_no
        self.expected_dim = expected_dim
        self.config = config
        # Writes and reloads take turns, so a write never lands in a shard being replaced.
        self._write_lock = threading.Lock()
        self.shard = self._load()
        self._probe_id: str | None = None
        # One attribute, replaced whole: a search reads it in one step, never half a reload.
        self._version: ShardVersion = (time.time_ns(), 0)

    @property
    def version(self) -> ShardVersion:
        """This shard's `ShardVersion`. A write counts once it is searchable, and a search
        reads the version before it starts, so what it returns is at least that new."""
        return self._version

    def _wrote(self) -> None:
        loaded, writes = self._version
        self._version = (loaded, writes + 1)

    def _load(self) -> Shard:
        return Shard.load(
            self.index_dir,
            self.shard_no,
            expected_dim=self.expected_dim,
            settings=self.config,
            snapshot_every=self.config.snapshot_every,
            use_gpu=self.config.use_gpu,
        )

    def configure(self, config: RetrieverConfig) -> None:
        """Apply the search-time fields of `config` to the loaded shard (no reload)."""
        self.config = self.config.model_copy(
            update={k: getattr(config, k) for k in SEARCH_TIME_FIELDS}
        )
        self.shard.settings = self.config
        self.shard.snapshot_every = self.config.snapshot_every

    def reload(self) -> dict:
        """Load the shard again from disk and swap it in; on failure keep serving the old one.

        Writers wait while the files are read, so no change slips between the two.
        Raises IndexIntegrityError (the old shard stays) when the files are bad.
        """
        with self._write_lock:
            try:
                fresh = self._load()
            except IndexIntegrityError:
                log.exception("shard %d: reload failed, keeping the loaded index", self.shard_no)
                raise
            self.shard = fresh
            self._probe_id = None
            self._version = (max(time.time_ns(), self._version[0] + 1), 0)
        return self.shard.stats()

    def search(
        self,
        vector: np.ndarray,
        k: int,
        exclude: Sequence[str] = (),
        categories: Sequence[str] | None = None,
    ) -> list[Hit]:
        return self.shard.search(vector, k, exclude=exclude, categories=categories)

    def search_ids(
        self,
        vector: np.ndarray,
        k: int,
        exclude: Sequence[str] = (),
        categories: Sequence[str] | None = None,
        also: Sequence[str] = (),
        rows_for: int = 0,
    ) -> Found:
        """The top `k` as ids and scores, the scores of the `also` items, and the rows of the
        best `rows_for` (`Shard.find`), with this shard's version."""
        version = self.version
        found = self.shard.find(
            vector, k, exclude=exclude, categories=categories, also=also, rows_for=rows_for
        )
        return found._replace(versions={self.shard_no: version})

    def lookup(self, item_ids: Sequence[str]) -> dict[str, tuple[Hit, np.ndarray]]:
        return self.shard.lookup(item_ids)

    def upsert(self, items: Sequence[Item], vectors: np.ndarray) -> int:
        """Add or replace items; durable and searchable when this returns (the log's seq)."""
        with self._write_lock:
            seq = self.shard.upsert(items, vectors)
            self._wrote()
            return seq

    def delete(self, item_ids: Sequence[str]) -> list[str]:
        """Delete items; returns the ids this shard had."""
        with self._write_lock:
            deleted = self.shard.delete(item_ids)
            if deleted:
                self._wrote()
            return deleted

    def stats(self) -> dict:
        return {"shard": self.shard_no, **self.shard.stats()}

    def check_health(self) -> None:
        """A real search for a stored item's vector must return that item in the top 10."""
        shard = self.shard
        if self._probe_id not in shard.position:
            self._probe_id = shard.any_item()
        if self._probe_id is None:
            return
        found = shard.lookup([self._probe_id])
        if self._probe_id not in found:
            return  # deleted since; the next probe picks another item
        hits = shard.search(found[self._probe_id][1], PROBE_K)
        if self._probe_id not in [h.item_id for h in hits]:
            raise RuntimeError(
                f"shard {self.shard_no} probe search for item {self._probe_id!r} "
                f"returned {[h.item_id for h in hits]}"
            )


class ShardGroupCore:
    """The shards `shard_nos` of an index of `n_shards`, served together by one replica.

    Each shard keeps its own files, change log and lock (a `ShardRetrieverCore`);
    this class splits the ids of a call by owner and merges what comes back.
    """

    def __init__(
        self,
        index_dir: Path,
        shard_nos: Sequence[int],
        n_shards: int,
        config: RetrieverConfig,
        expected_dim: int | None = None,
    ) -> None:
        if not shard_nos:
            raise ValueError("a shard group needs at least one shard")
        self.n_shards = n_shards
        self.cores = {
            s: ShardRetrieverCore(index_dir, s, config, expected_dim=expected_dim)
            for s in shard_nos
        }

    @property
    def config(self) -> RetrieverConfig:
        return next(iter(self.cores.values())).config

    def _by_owner(self, item_ids: Sequence[str]) -> dict[int, list[str]]:
        """`item_ids` split by the shard of this group that owns them (others dropped)."""
        parts: dict[int, list[str]] = {s: [] for s in self.cores}
        for item_id in item_ids:
            part = parts.get(shard_of(item_id, self.n_shards))
            if part is not None:
                part.append(item_id)
        return parts

    def configure(self, config: RetrieverConfig) -> None:
        for core in self.cores.values():
            core.configure(config)

    def reload(self) -> dict:
        """Reload every shard (see `ShardRetrieverCore.reload`); their stats by shard."""
        return {s: core.reload() for s, core in self.cores.items()}

    def search(
        self,
        vector: np.ndarray,
        k: int,
        exclude: Sequence[str] = (),
        categories: Sequence[str] | None = None,
    ) -> list[Hit]:
        parts = self._by_owner(exclude)
        found = [c.search(vector, k, parts[s], categories) for s, c in self.cores.items()]
        return merge_top_k(found, k)

    def search_ids(
        self,
        vector: np.ndarray,
        k: int,
        exclude: Sequence[str] = (),
        categories: Sequence[str] | None = None,
        also: Sequence[str] = (),
        rows_for: int = 0,
    ) -> Found:
        """The `k` best of this group's shards, each searched without the `exclude` it owns,
        the scores of the `also` items they hold, and the rows of the best `rows_for`."""
        excluded, asked = self._by_owner(exclude), self._by_owner(also)
        found = [
            c.search_ids(vector, k, excluded[s], categories, asked[s])
            for s, c in self.cores.items()
        ]
        nearest = merge_top_k([f.nearest for f in found], k)
        rows = self.lookup([s.item_id for s in nearest[:rows_for]]) if rows_for > 0 else None
        versions = {s: v for f in found for s, v in (f.versions or {}).items()}
        return Found(nearest, [scored for f in found for scored in f.scored], rows, versions)

    def lookup(self, item_ids: Sequence[str]) -> dict[str, tuple[Hit, np.ndarray]]:
        found: dict[str, tuple[Hit, np.ndarray]] = {}
        for s, ids in self._by_owner(item_ids).items():
            if ids:
                found.update(self.cores[s].lookup(ids))
        return found

    def upsert(self, items: Sequence[Item], vectors: np.ndarray) -> int:
        """Write each item to its shard; the highest change-log seq among them.

        Raises ValueError for an item this group does not own (the router sends
        each replica only its own).
        """
        rows: dict[int, list[int]] = {}
        for n, item in enumerate(items):
            s = shard_of(item.item_id, self.n_shards)
            if s not in self.cores:
                raise ValueError(f"item {item.item_id!r} belongs to shard {s}, not this replica")
            rows.setdefault(s, []).append(n)
        seqs = [self.cores[s].upsert([items[n] for n in ns], vectors[ns]) for s, ns in rows.items()]
        return max(seqs, default=0)

    def delete(self, item_ids: Sequence[str]) -> list[str]:
        deleted: list[str] = []
        for s, ids in self._by_owner(item_ids).items():
            if ids:
                deleted += self.cores[s].delete(ids)
        return deleted

    def stats(self) -> list[dict]:
        return [core.stats() for core in self.cores.values()]

    def check_health(self) -> None:
        for core in self.cores.values():
            core.check_health()
