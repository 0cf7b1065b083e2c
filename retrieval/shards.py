"""FAISS shards: build, verify, load and search one slice of the catalog.

An index folder holds `shard-NNN.faiss` (vectors, inner-product metric over
unit vectors, ids = row positions in the shard), `shard-NNN.parquet` (the
shard's item rows in the same order: item_id, title, text, categories) and
`manifest.json` describing both with sha256 digests. Items are owned by shard
`crc32(item_id) % n_shards`, so an upsert knows where to go without a lookup.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "MANIFEST_NAME",
    "Hit",
    "IndexIntegrityError",
    "Manifest",
    "Shard",
    "ShardFiles",
    "build_shards",
    "load_manifest",
    "shard_of",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
METRIC = "inner_product"


class IndexIntegrityError(RuntimeError):
    """A shard file is missing, corrupt or does not match the manifest or the encoder."""


def shard_of(item_id: str, n_shards: int) -> int:
    """The shard that owns `item_id` (stable across processes and runs)."""
    return zlib.crc32(item_id.encode()) % n_shards


@dataclass(frozen=True)
class ShardFiles:
    index_file: str
    items_file: str
    items: int
    index_sha256: str
    items_sha256: str


@dataclass(frozen=True)
class Manifest:
    dim: int
    metric: str
    encoder_id: str
    items: int
    faiss_version: str
    index_type: str
    shards: list[ShardFiles]
    created_at: float = field(default_factory=time.time)

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float
    title: str
    text: str
    categories: list[str]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(index_dir: Path) -> Manifest:
    """Read `manifest.json`; raises IndexIntegrityError if it is missing or malformed."""
    path = Path(index_dir) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
        shards = [ShardFiles(**s) for s in raw.pop("shards")]
        return Manifest(shards=shards, **raw)
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"{path}: no manifest; run `llmrec build` first") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise IndexIntegrityError(f"{path}: malformed manifest ({exc})") from exc


def _flat_index(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    return index


def build_shards(
    catalog: pa.Table,
    vectors: np.ndarray,
    out_dir: Path,
    *,
    n_shards: int,
    encoder_id: str,
) -> Manifest:
    """Split `catalog` (rows aligned with `vectors`) into `n_shards` and write them.

    The folder is written beside `out_dir` under a temporary name and swapped in
    with renames, so a reader sees the old index or the new one, never a mix.
    """
    if len(catalog) != len(vectors):
        raise ValueError(f"{len(catalog)} catalog rows but {len(vectors)} vectors")
    if n_shards < 1:
        raise ValueError("n_shards must be >= 1")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        owner = np.array([shard_of(i, n_shards) for i in catalog["item_id"].to_pylist()])
        files = []
        for s in range(n_shards):
            rows = np.flatnonzero(owner == s)
            index_file, items_file = f"shard-{s:03d}.faiss", f"shard-{s:03d}.parquet"
            faiss.write_index(_flat_index(vectors[rows]), str(tmp / index_file))
            items = catalog.select(["item_id", "title", "text", "categories"]).take(rows)
            pq.write_table(items, tmp / items_file)
            files.append(
                ShardFiles(
                    index_file=index_file,
                    items_file=items_file,
                    items=len(rows),
                    index_sha256=_sha256(tmp / index_file),
                    items_sha256=_sha256(tmp / items_file),
                )
            )
        manifest = Manifest(
            dim=int(vectors.shape[1]),
            metric=METRIC,
            encoder_id=encoder_id,
            items=len(catalog),
            faiss_version=faiss.__version__,
            index_type="flat",
            shards=files,
        )
        (tmp / MANIFEST_NAME).write_text(manifest.to_json())
        old = out_dir.with_name(f".{out_dir.name}-old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Shard:
    """One loaded shard: a FAISS index plus the rows of its items.

    `search` answers the top-k items of this shard for a query vector, with
    category filters and exclusions applied inside the FAISS search (an ID
    selector), so a filtered query still fills k when k items qualify.
    """

    def __init__(self, index: faiss.Index, items: pa.Table) -> None:
        if index.ntotal != len(items):
            raise IndexIntegrityError(f"index has {index.ntotal} vectors, items {len(items)}")
        self.index = index
        self.dim = index.d
        self.item_ids: list[str] = items["item_id"].to_pylist()
        self.titles: list[str] = items["title"].to_pylist()
        self.texts: list[str] = items["text"].to_pylist()
        self.categories: list[list[str]] = items["categories"].to_pylist()
        self.position = {item_id: pos for pos, item_id in enumerate(self.item_ids)}
        by_category: dict[str, list[int]] = {}
        for pos, cats in enumerate(self.categories):
            for c in cats or ():
                by_category.setdefault(c, []).append(pos)
        self.by_category = {c: np.asarray(p, dtype=np.int64) for c, p in by_category.items()}

    @classmethod
    def load(cls, index_dir: Path, shard_no: int, *, expected_dim: int | None = None) -> Shard:
        """Load shard `shard_no`, checking digests, counts and dimension against the manifest.

        Raises IndexIntegrityError naming the file and the mismatch.
        """
        index_dir = Path(index_dir)
        manifest = load_manifest(index_dir)
        if not 0 <= shard_no < manifest.n_shards:
            raise IndexIntegrityError(
                f"{index_dir}: shard {shard_no} requested, manifest has {manifest.n_shards}"
            )
        if expected_dim is not None and manifest.dim != expected_dim:
            raise IndexIntegrityError(
                f"{index_dir / MANIFEST_NAME}: index dim {manifest.dim} but the encoder "
                f"produces {expected_dim}; rebuild with `llmrec build`"
            )
        if manifest.faiss_version.split(".")[:2] != faiss.__version__.split(".")[:2]:
            log.warning(
                "index written by faiss %s, loading with %s",
                manifest.faiss_version,
                faiss.__version__,
            )
        files = manifest.shards[shard_no]
        for name, want in (
            (files.index_file, files.index_sha256),
            (files.items_file, files.items_sha256),
        ):
            path = index_dir / name
            if not path.exists():
                raise IndexIntegrityError(f"{path}: missing")
            got = _sha256(path)
            if got != want:
                raise IndexIntegrityError(
                    f"{path}: sha256 {got[:12]}… does not match manifest {want[:12]}…"
                )
        try:
            index = faiss.read_index(str(index_dir / files.index_file))
            items = pq.read_table(index_dir / files.items_file)
        except (RuntimeError, OSError, pa.ArrowException) as exc:
            raise IndexIntegrityError(
                f"{index_dir / files.index_file}: unreadable ({exc})"
            ) from exc
        if index.d != manifest.dim:
            raise IndexIntegrityError(
                f"{index_dir / files.index_file}: dim {index.d}, manifest says {manifest.dim}"
            )
        if len(items) != files.items:
            raise IndexIntegrityError(
                f"{index_dir / files.items_file}: {len(items)} items, manifest says {files.items}"
            )
        return cls(index, items)

    def __len__(self) -> int:
        return len(self.item_ids)

    def _selector(
        self, exclude: Iterable[str], categories: Sequence[str] | None
    ) -> faiss.IDSelector | None:
        excluded = np.asarray(
            [self.position[i] for i in exclude if i in self.position], dtype=np.int64
        )
        if categories:
            parts = [self.by_category[c] for c in categories if c in self.by_category]
            allowed = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)
            allowed = np.setdiff1d(allowed, excluded, assume_unique=True)
            return faiss.IDSelectorBatch(allowed)
        if len(excluded):
            return faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded))
        return None

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        exclude: Iterable[str] = (),
        categories: Sequence[str] | None = None,
    ) -> list[Hit]:
        """Top-`k` items by inner product with `query` (shape `(dim,)`), best first."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise ValueError(f"query has dim {query.shape[1]}, shard {self.dim}")
        k = min(k, len(self))
        if k == 0:
            return []
        selector = self._selector(exclude, categories)
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        scores, ids = self.index.search(query, k, params=params)
        return [
            self._hit(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0
        ]

    def _hit(self, pos: int, score: float) -> Hit:
        return Hit(
            item_id=self.item_ids[pos],
            score=score,
            title=self.titles[pos],
            text=self.texts[pos],
            categories=list(self.categories[pos] or ()),
        )

    def lookup(self, item_ids: Iterable[str]) -> dict[str, tuple[Hit, np.ndarray]]:
        """Rows and stored vectors of the given items that this shard owns."""
        found = {}
        for item_id in item_ids:
            pos = self.position.get(item_id)
            if pos is not None:
                found[item_id] = (self._hit(pos, 0.0), self.index.reconstruct(pos))
        return found
