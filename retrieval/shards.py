"""FAISS shards: load, verify, search and change one slice of the catalog.

A loaded shard is the last snapshot (read-only) plus an exact in-memory index
of vectors added since (the delta). Upserts and deletes are fsynced to the
change log before they apply; a replaced or deleted row stays in the index as a
tombstone that every search excludes through its ID selector, until the next
`llmrec build` drops it. Every `snapshot_every` changes the shard writes a new
generation of its files (the delta folded in), swaps its manifest entry
atomically under a file lock and empties its log. One process owns a shard's
files: a shard that takes writes must run as one replica. The folder layout
and `build_shards` are in `retrieval.index_files`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.changes import CHANGES_SUFFIX, Change, ChangeLog, Item
from retrieval.config import RetrieverConfig
from retrieval.index_files import (
    MANIFEST_NAME,
    Manifest,
    ShardFiles,
    ShardLayout,
    build_shards,
    check_faiss_version,
    load_manifest,
    shard_of,
    update_manifest,
    write_rows,
)
from retrieval.index_types import ShardIndex
from retrieval.integrity import IndexIntegrityError, sha256_of

__all__ = [
    "MANIFEST_NAME",
    "Hit",
    "IndexIntegrityError",
    "Item",
    "Manifest",
    "Scored",
    "ShardVersion",
    "Found",
    "Shard",
    "ShardFiles",
    "ShardLayout",
    "build_shards",
    "load_manifest",
    "shard_of",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float
    title: str
    text: str
    categories: list[str]


class Scored(NamedTuple):
    """A search result without its row: what a shard sends when the caller has the rows."""

    item_id: str
    score: float


ShardVersion = tuple[int, int]
"""A shard's state as a retriever replica serves it: (when it was loaded, in ns since the
epoch; catalog writes applied since). It only grows while the shard's content stays the
same, and moves with every upsert, delete and reload."""


class Found(NamedTuple):
    """A shard's answer to the router: its top k, and the scores of the ids it was asked about.

    `scored` holds the inner product of the query with each asked-about item the
    shard holds (live, and in `categories` when given), so candidates proposed by
    other sources get their cosine without their rows crossing a hop. `rows` holds
    the rows and vectors of the best `rows_for` nearest when the caller asked for
    them (a query-only request, whose shown items are mostly these): no second call.
    `versions` holds the version of each shard searched (`ShardVersion`), read before
    the search, so the caller can tell whether rows it keeps from a shard are current.
    """

    nearest: list[Scored]
    scored: list[Scored]
    rows: dict[str, tuple[Hit, np.ndarray]] | None = None
    versions: dict[int, ShardVersion] | None = None

    def __reduce__(self):
        # Across a Serve hop as plain (id, score) tuples: pickling hundreds of NamedTuples
        # one by one cost the router and the retriever about 0.5 ms a search between them.
        nearest, scored = list(map(tuple, self.nearest)), list(map(tuple, self.scored))
        return _found, (nearest, scored, self.rows, self.versions)


def _found(
    nearest: list[tuple[str, float]],
    scored: list[tuple[str, float]],
    rows: dict[str, tuple[Hit, np.ndarray]] | None,
    versions: dict[int, ShardVersion] | None = None,
) -> Found:
    """A `Found` again from what `Found.__reduce__` sent."""
    return Found(list(map(Scored._make, nearest)), list(map(Scored._make, scored)), rows, versions)


def _by_category(categories: Sequence[list[str] | None]) -> dict[str, np.ndarray]:
    rows: dict[str, list[int]] = {}
    for pos, cats in enumerate(categories):
        for c in cats or ():
            rows.setdefault(c, []).append(pos)
    return {c: np.asarray(p, dtype=np.int64) for c, p in rows.items()}


def _bitmap(mask: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """An IDSelectorBitmap over row positions; the returned array must outlive the search."""
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits


@dataclass(frozen=True)
class _View:
    """What one search reads; a snapshot swaps in a new one whole.

    `base` is immutable; `delta` and `delta_categories` only grow, under the
    shard's locks.
    """

    base: ShardIndex
    base_n: int
    delta: faiss.IndexFlatIP
    base_categories: dict[str, np.ndarray]
    delta_categories: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Home:
    index_dir: Path
    shard_no: int
    n_shards: int
    kind: str
    params: dict
    changes: ChangeLog


class Shard:
    """One loaded shard: search, lookup and (for a shard loaded from disk) upsert and delete.

    `search` answers the top-k live items for a query vector, with category
    filters, exclusions and tombstones applied inside the FAISS search (an ID
    selector); a selector that lets through few rows, or an approximate search
    that comes back short, is answered exhaustively over the allowed rows, so a
    filtered query still fills k when k items qualify. Searches and lookups may
    run concurrently with each other and with one writer.
    """

    def __init__(
        self,
        base: ShardIndex,
        rows: pa.Table,
        *,
        deleted: np.ndarray | None = None,
        settings: RetrieverConfig | None = None,
    ) -> None:
        n = len(rows)
        if base.ntotal != n:
            raise IndexIntegrityError(f"index has {base.ntotal} vectors, items {n}")
        self.dim = base.d
        self.settings = settings or RetrieverConfig()
        self.snapshot_every = 1000
        self.item_ids: list[str] = rows["item_id"].to_pylist()
        self.titles: list[str] = rows["title"].to_pylist()
        self.texts: list[str] = rows["text"].to_pylist()
        self.categories: list[list[str]] = [list(c or ()) for c in rows["categories"].to_pylist()]
        self._alive = np.ones(max(n, 16), dtype=bool)
        if deleted is not None:
            self._alive[:n] = ~np.asarray(deleted, dtype=bool)
        self._n = n
        self._dead = n - int(np.count_nonzero(self._alive[:n]))
        self.position = {i: pos for pos, i in enumerate(self.item_ids) if self._alive[pos]}
        self._view = _View(base, n, faiss.IndexFlatIP(self.dim), _by_category(self.categories))
        self._write_lock = threading.RLock()
        self._delta_lock = threading.Lock()
        self._home: _Home | None = None
        self.files: ShardFiles | None = None
        self.seq = 0
        self._since_snapshot = 0
        self._use_gpu = False

    @classmethod
    def load(
        cls,
        index_dir: Path,
        shard_no: int,
        *,
        expected_dim: int | None = None,
        settings: RetrieverConfig | None = None,
        snapshot_every: int = 1000,
        use_gpu: bool = False,
    ) -> Shard:
        """Load shard `shard_no` and replay its change log.

        Checks the manifest (faiss version, dimension against the encoder's),
        the sha256 of every file, the index type and shape, the row counts and
        every line of the change log. Raises IndexIntegrityError naming the
        file and the mismatch.
        """
        index_dir = Path(index_dir)
        manifest = load_manifest(index_dir)
        manifest_path = index_dir / MANIFEST_NAME
        if not 0 <= shard_no < manifest.n_shards:
            raise IndexIntegrityError(
                f"{index_dir}: shard {shard_no} requested, manifest has {manifest.n_shards}"
            )
        if expected_dim is not None and manifest.dim != expected_dim:
            raise IndexIntegrityError(
                f"{manifest_path}: index dim {manifest.dim} but the encoder "
                f"produces {expected_dim}; rebuild with `llmrec build`"
            )
        check_faiss_version(manifest, manifest_path)
        files = manifest.shards[shard_no]
        digests = [
            (files.index_file, files.index_sha256),
            (files.items_file, files.items_sha256),
        ]
        if files.vectors_file:
            digests.append((files.vectors_file, files.vectors_sha256))
        for name, want in digests:
            path = index_dir / name
            if not path.exists():
                raise IndexIntegrityError(f"{path}: missing")
            got = sha256_of(path)
            if got != want:
                raise IndexIntegrityError(
                    f"{path}: sha256 {got[:12]}… does not match manifest {(want or '')[:12]}…"
                )
        base = ShardIndex.read(
            index_dir / files.index_file,
            manifest.index_type,
            manifest.index_params,
            dim=manifest.dim,
            rows=files.items,
            vectors_path=index_dir / files.vectors_file if files.vectors_file else None,
            use_gpu=use_gpu,
        )
        items_path = index_dir / files.items_file
        try:
            items = pq.read_table(items_path)
        except (OSError, pa.ArrowException) as exc:
            raise IndexIntegrityError(f"{items_path}: unreadable ({exc})") from exc
        if len(items) != files.items:
            raise IndexIntegrityError(
                f"{items_path}: {len(items)} items, manifest says {files.items}"
            )
        deleted = None
        if "deleted" in items.column_names:
            deleted = items["deleted"].to_numpy(zero_copy_only=False)
            if int(deleted.sum()) != files.deleted:
                raise IndexIntegrityError(
                    f"{items_path}: {int(deleted.sum())} deleted rows, manifest says "
                    f"{files.deleted}"
                )
        shard = cls(base, items, deleted=deleted, settings=settings)
        shard._use_gpu = use_gpu
        shard.snapshot_every = snapshot_every
        shard.files = files
        shard._home = _Home(
            index_dir=index_dir,
            shard_no=shard_no,
            n_shards=manifest.n_shards,
            kind=manifest.index_type,
            params=manifest.index_params,
            changes=ChangeLog(index_dir / f"shard-{shard_no:03d}{CHANGES_SUFFIX}", manifest.dim),
        )
        replayed = shard._home.changes.replay(files.changes_seq)
        for change in replayed:
            if shard_of(change.item_id, manifest.n_shards) != shard_no:
                raise IndexIntegrityError(
                    f"{shard._home.changes.path}: seq {change.seq} changes item "
                    f"{change.item_id!r}, which shard {shard_no} does not own"
                )
        shard._apply(replayed)
        shard.seq = replayed[-1].seq if replayed else files.changes_seq
        shard._since_snapshot = len(replayed)
        return shard

    def __len__(self) -> int:
        return len(self.position)

    # ---- reading ----------------------------------------------------------------

    def _mask(
        self, view: _View, n_rows: int, exclude: Iterable[str], categories: Sequence[str] | None
    ) -> np.ndarray | None:
        """Rows a search may return, or None when it may return every row."""
        excluded = [p for p in (self.position.get(i) for i in exclude) if p is not None]
        if not categories and not excluded and not self._dead:
            return None
        if categories:
            mask = np.zeros(n_rows, dtype=bool)
            for c in categories:
                mask[view.base_categories.get(c, [])] = True
                delta_rows = [r for r in view.delta_categories.get(c, ()) if r < n_rows]
                mask[delta_rows] = True
            mask &= self._alive[:n_rows]
        else:
            mask = self._alive[:n_rows].copy()
        mask[[p for p in excluded if p < n_rows]] = False
        return mask

    def _search_base(
        self, view: _View, query: np.ndarray, k: int, mask: np.ndarray | None
    ) -> list[tuple[float, int]]:
        n = view.base_n
        if n == 0:
            return []
        base, settings = view.base, self.settings
        sel = bits = None
        allowed = n
        if mask is not None:
            allowed = int(np.count_nonzero(mask[:n]))
            if allowed == 0:
                return []
            sel, bits = _bitmap(mask[:n])
        want = min(k, allowed)
        fraction = allowed / n
        if fraction < settings.exact_filter_fraction:
            scores, ids = base.exhaustive(query, want, settings, sel)
        else:
            scores, ids = base.search(query, want, settings, sel, fraction)
            if int(np.count_nonzero(ids[0] >= 0)) < want:
                # IVF lists or an HNSW beam can hold fewer allowed rows than k.
                scores, ids = base.exhaustive(query, want, settings, sel)
        del bits
        return [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    def _search_delta(
        self, view: _View, query: np.ndarray, k: int, mask: np.ndarray | None, n_rows: int
    ) -> list[tuple[float, int]]:
        m = n_rows - view.base_n
        if m <= 0:
            return []
        params = bits = None
        if mask is not None:
            if not mask[view.base_n : n_rows].any():
                return []
            sel, bits = _bitmap(mask[view.base_n : n_rows])
            params = faiss.SearchParameters(sel=sel)
        with self._delta_lock:
            scores, ids = view.delta.search(query, min(k, m), params=params)
        del bits
        return [
            (float(s), view.base_n + int(i))
            for s, i in zip(scores[0], ids[0], strict=True)
            if 0 <= i < m
        ]

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        exclude: Iterable[str] = (),
        categories: Sequence[str] | None = None,
    ) -> list[Hit]:
        """Top-`k` live items by inner product with `query` (shape `(dim,)`), best first."""
        return [self._hit(row, score) for score, row in self._top(query, k, exclude, categories)]

    def search_ids(
        self,
        query: np.ndarray,
        k: int,
        *,
        exclude: Iterable[str] = (),
        categories: Sequence[str] | None = None,
    ) -> list[Scored]:
        """`search` without the rows: ids and scores only, best first."""
        return [
            Scored(self.item_ids[row], score)
            for score, row in self._top(query, k, exclude, categories)
        ]

    def score_ids(
        self,
        query: np.ndarray,
        item_ids: Iterable[str],
        categories: Sequence[str] | None = None,
    ) -> list[Scored]:
        """Inner product of `query` with each live item of `item_ids` this shard holds
        (only those in one of `categories`, when given), in the order asked."""
        rows = [(i, p) for i, p in ((i, self.position.get(i)) for i in item_ids) if p is not None]
        if categories:
            wanted = set(categories)
            rows = [(i, p) for i, p in rows if wanted & set(self.categories[p])]
        if not rows:
            return []
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        vectors = self._vectors([p for _, p in rows])
        return [Scored(i, float(s)) for (i, _), s in zip(rows, vectors @ query, strict=True)]

    def find(
        self,
        query: np.ndarray,
        k: int,
        *,
        exclude: Iterable[str] = (),
        categories: Sequence[str] | None = None,
        also: Iterable[str] = (),
        rows_for: int = 0,
    ) -> Found:
        """`search_ids`, `score_ids` of `also`, and the rows of the best `rows_for` (`Found`)."""
        nearest = self.search_ids(query, k, exclude=exclude, categories=categories)
        rows = self.lookup(s.item_id for s in nearest[:rows_for]) if rows_for > 0 else None
        return Found(nearest, self.score_ids(query, also, categories), rows)

    def _top(
        self,
        query: np.ndarray,
        k: int,
        exclude: Iterable[str],
        categories: Sequence[str] | None,
    ) -> list[tuple[float, int]]:
        """(score, row) of the top-`k` live rows, best first."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise ValueError(f"query has dim {query.shape[1]}, shard {self.dim}")
        view = self._view
        n_rows = self._n
        k = min(k, len(self))
        if k <= 0:
            return []
        mask = self._mask(view, n_rows, exclude, categories)
        found = self._search_base(view, query, k, mask)
        found += self._search_delta(view, query, k, mask, n_rows)
        found.sort(key=lambda t: -t[0])
        return found[:k]

    def _hit(self, pos: int, score: float) -> Hit:
        return Hit(
            item_id=self.item_ids[pos],
            score=score,
            title=self.titles[pos],
            text=self.texts[pos],
            categories=list(self.categories[pos]),
        )

    def _vectors(self, rows: Sequence[int]) -> np.ndarray:
        """Stored vectors of `rows`, in that order: the snapshot's in one batch."""
        view = self._view
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        base = [n for n, row in enumerate(rows) if row < view.base_n]
        if base:
            out[base] = view.base.vectors(np.array([rows[n] for n in base]))
        delta = [n for n, row in enumerate(rows) if row >= view.base_n]
        if delta:
            with self._delta_lock:
                for n in delta:
                    out[n] = view.delta.reconstruct(rows[n] - view.base_n)
        return out

    def lookup(self, item_ids: Iterable[str]) -> dict[str, tuple[Hit, np.ndarray]]:
        """Rows and stored vectors of the given live items that this shard owns."""
        held = [(i, p) for i, p in ((i, self.position.get(i)) for i in item_ids) if p is not None]
        vectors = self._vectors([p for _, p in held])
        return {i: (self._hit(p, 0.0), v) for (i, p), v in zip(held, vectors, strict=True)}

    def any_item(self) -> str | None:
        """The id of the first live row, or None when the shard is empty."""
        live = np.flatnonzero(self._alive[: self._n])
        return self.item_ids[live[0]] if len(live) else None

    def stats(self) -> dict:
        """Counts a person checking the shard wants: rows, live items, tombstones, delta, seq."""
        view = self._view
        return {
            "index_type": view.base.kind,
            "rows": self._n,
            "live": len(self),
            "deleted": self._dead,
            "delta": self._n - view.base_n,
            "seq": self.seq,
            "generation": self.files.generation if self.files else 0,
        }

    # ---- writing ----------------------------------------------------------------

    def _apply(self, changes: Sequence[Change]) -> None:
        """Apply logged changes in memory (caller holds the write lock, or is loading).

        New rows reach the delta before their ids are published, and the rows
        they replace die after, so a concurrent search never sees an id without
        its vector (at worst both versions for a moment; merging drops repeats).
        """
        view = self._view
        vectors = []
        replaced = []
        latest: dict[str, int | None] = {}
        for change in changes:
            old = (
                latest[change.item_id]
                if change.item_id in latest
                else self.position.get(change.item_id)
            )
            if old is not None:
                replaced.append(old)
            latest[change.item_id] = None
            if change.op == "upsert":
                assert change.item is not None and change.vector is not None
                latest[change.item_id] = self._append_row(view, change.item)
                vectors.append(change.vector)
        if vectors:
            with self._delta_lock:
                view.delta.add(np.stack(vectors).astype(np.float32))
        self._n = len(self.item_ids)
        for item_id, row in latest.items():
            if row is None:
                self.position.pop(item_id, None)
            else:
                self.position[item_id] = row
        for row in replaced:
            self._alive[row] = False
        self._dead += len(replaced)

    def _append_row(self, view: _View, item: Item) -> int:
        row = len(self.item_ids)
        if row >= len(self._alive):
            grown = np.zeros(2 * len(self._alive), dtype=bool)
            grown[: len(self._alive)] = self._alive
            self._alive = grown
        self._alive[row] = True
        self.item_ids.append(item.item_id)
        self.titles.append(item.title)
        self.texts.append(item.text)
        self.categories.append(list(item.categories))
        for c in item.categories:
            view.delta_categories.setdefault(c, []).append(row)
        return row

    def _commit(self, changes: list[Change]) -> None:
        if self._home is not None:
            self._home.changes.append(changes)
        self.seq = changes[-1].seq
        self._apply(changes)
        self._since_snapshot += len(changes)
        if self._home is not None and self._since_snapshot >= self.snapshot_every:
            try:
                self._snapshot_locked()
            except (OSError, RuntimeError) as exc:
                # The changes are durable in the log; the next write retries the snapshot.
                log.error("shard %d: snapshot failed, keeping the log: %s", self.shard_no, exc)

    @property
    def shard_no(self) -> int:
        return self._home.shard_no if self._home else 0

    def upsert(self, items: Sequence[Item], vectors: np.ndarray) -> int:
        """Add or replace `items` (row i of `vectors` is item i's unit vector).

        The changes are in the log (fsynced) before they become searchable; the
        next search sees them. Returns the sequence number of the last change.
        Raises ValueError for a vector of the wrong shape or an item another
        shard owns.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(items), self.dim) or not np.isfinite(vectors).all():
            raise ValueError(
                f"expected {len(items)} finite vectors of dim {self.dim}, got {vectors.shape}"
            )
        if self._home is not None:
            for item in items:
                if shard_of(item.item_id, self._home.n_shards) != self._home.shard_no:
                    raise ValueError(f"item {item.item_id!r} belongs to another shard")
        if not items:
            return self.seq
        with self._write_lock:
            changes = [
                Change(seq=self.seq + n, op="upsert", item_id=it.item_id, item=it, vector=v)
                for n, (it, v) in enumerate(zip(items, vectors, strict=True), 1)
            ]
            self._commit(changes)
            return self.seq

    def delete(self, item_ids: Iterable[str]) -> list[str]:
        """Delete the given items; returns those that were here (the rest are unknown)."""
        with self._write_lock:
            present = [i for i in dict.fromkeys(item_ids) if i in self.position]
            if present:
                self._commit(
                    [
                        Change(seq=self.seq + n, op="delete", item_id=i)
                        for n, i in enumerate(present, 1)
                    ]
                )
            return present

    def snapshot(self) -> ShardFiles | None:
        """Fold the delta into a new generation of this shard's files now (None if in memory)."""
        with self._write_lock:
            return self._snapshot_locked() if self._home is not None else None

    def _snapshot_locked(self) -> ShardFiles:
        home, old = self._home, self.files
        assert home is not None and old is not None
        view, n = self._view, self._n
        with self._delta_lock:
            m = view.delta.ntotal
            added = view.delta.reconstruct_n(0, m) if m else np.zeros((0, self.dim), np.float32)
        stem = f"shard-{home.shard_no:03d}.g{old.generation + 1}"
        index_file, vectors_file = view.base.with_vectors(added).write(home.index_dir, stem)
        items_file = f"{stem}.parquet"
        dead = ~self._alive[:n]
        rows = pa.table(
            {
                "item_id": self.item_ids[:n],
                "title": self.titles[:n],
                "text": self.texts[:n],
                "categories": pa.array(self.categories[:n], type=pa.list_(pa.string())),
                "deleted": dead,
            }
        )
        write_rows(rows, home.index_dir / items_file)
        files = ShardFiles(
            index_file=index_file,
            items_file=items_file,
            items=n,
            index_sha256=sha256_of(home.index_dir / index_file),
            items_sha256=sha256_of(home.index_dir / items_file),
            vectors_file=vectors_file,
            vectors_sha256=sha256_of(home.index_dir / vectors_file) if vectors_file else None,
            deleted=int(dead.sum()),
            changes_seq=self.seq,
            generation=old.generation + 1,
        )
        base = ShardIndex.read(
            home.index_dir / index_file,
            home.kind,
            home.params,
            dim=self.dim,
            rows=n,
            vectors_path=home.index_dir / vectors_file if vectors_file else None,
            use_gpu=self._use_gpu,
        )
        update_manifest(home.index_dir, home.shard_no, files)
        home.changes.reset()
        self._view = _View(base, n, faiss.IndexFlatIP(self.dim), _by_category(self.categories[:n]))
        self.files = files
        self._since_snapshot = 0
        for name in (old.index_file, old.items_file, old.vectors_file):
            if name and name not in (index_file, items_file, vectors_file):
                (home.index_dir / name).unlink(missing_ok=True)
        log.info("shard %d: snapshot generation %d (%d rows)", home.shard_no, files.generation, n)
        return files
