"""The on-disk index folder: manifest, shard files, and building them.

An index folder holds, per shard, `shard-NNN.faiss` (the index, one of the
types in `retrieval.index_types`, ids = row positions), `shard-NNN.parquet`
(the rows in the same order: item_id, title, text, categories and, after a
snapshot, deleted), for IVF-PQ with refinement `shard-NNN.vectors.faiss`
(full vectors, memory-mapped), the change log `shard-NNN.changes.jsonl`
(`retrieval.changes`), and one `manifest.json` describing them with sha256
digests. A snapshot writes `shard-NNN.gG.*` files of generation G and swaps
the shard's manifest entry. Items are owned by shard `crc32(item_id) %
n_shards`, so an upsert knows where to go without a lookup.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from retrieval.catalog_types import CATALOG_SCHEMA
from retrieval.config import IndexBuildConfig
from retrieval.index_types import CHUNK, ShardIndex, new_index, resolve_index
from retrieval.integrity import (
    IndexIntegrityError,
    file_lock,
    fsync_dir,
    replace_atomically,
    sha256_of,
    write_atomic,
)

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ShardFiles",
    "ShardLayout",
    "build_shards",
    "check_faiss_version",
    "load_manifest",
    "parse_manifest",
    "shard_of",
    "update_manifest",
    "write_rows",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
METRIC = "inner_product"


def shard_of(item_id: str, n_shards: int) -> int:
    """The shard that owns `item_id` (stable across processes and runs)."""
    return zlib.crc32(item_id.encode()) % n_shards


@dataclass(frozen=True)
class ShardLayout:
    """Which retriever replica serves which shards.

    Replica `g` serves shards `g * per_replica` up to the next replica's first
    (the last replica may serve fewer). With `per_replica` 1 every shard is its
    own replica; with `per_replica >= n_shards` one replica serves them all and a
    search costs the router one call.
    """

    n_shards: int
    per_replica: int = 1

    def __post_init__(self) -> None:
        if self.n_shards < 1 or self.per_replica < 1:
            raise ValueError(f"bad shard layout {self.n_shards} shards, {self.per_replica} each")

    @property
    def n_replicas(self) -> int:
        return -(-self.n_shards // self.per_replica)

    def shard(self, item_id: str) -> int:
        """The shard that owns `item_id`."""
        return shard_of(item_id, self.n_shards)

    def replica_of(self, shard_no: int) -> int:
        return shard_no // self.per_replica

    def replica(self, item_id: str) -> int:
        """The replica that serves the shard of `item_id`."""
        return self.replica_of(self.shard(item_id))

    def shards_of(self, replica: int) -> list[int]:
        first = replica * self.per_replica
        return list(range(first, min(first + self.per_replica, self.n_shards)))

    def names_of(self, replica: int) -> list[str]:
        """How `degraded` and the health check name the shards of `replica`."""
        return [f"shard-{s}" for s in self.shards_of(replica)]


@dataclass(frozen=True)
class ShardFiles:
    """One shard's entry in the manifest: its files, digests, rows and snapshot position."""

    index_file: str
    items_file: str
    items: int
    index_sha256: str
    items_sha256: str
    vectors_file: str | None = None
    vectors_sha256: str | None = None
    deleted: int = 0
    changes_seq: int = 0
    generation: int = 0


@dataclass(frozen=True)
class Manifest:
    dim: int
    metric: str
    encoder_id: str
    items: int
    faiss_version: str
    index_type: str
    shards: list[ShardFiles]
    index_params: dict = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def digests(self) -> dict[str, str]:
        """The sha256 of every shard file the manifest lists, by name inside the index folder."""
        out: dict[str, str] = {}
        for s in self.shards:
            out[s.index_file] = s.index_sha256
            out[s.items_file] = s.items_sha256
            if s.vectors_file and s.vectors_sha256:
                out[s.vectors_file] = s.vectors_sha256
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def parse_manifest(raw: bytes | str, where: str) -> Manifest:
    """The manifest in the text of a `manifest.json`; IndexIntegrityError naming `where` when
    it is malformed."""
    try:
        data = json.loads(raw)
        shards = [ShardFiles(**s) for s in data.pop("shards")]
        return Manifest(shards=shards, **data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise IndexIntegrityError(f"{where}: malformed manifest ({exc})") from exc


def load_manifest(index_dir: Path) -> Manifest:
    """Read `manifest.json`; raises IndexIntegrityError if it is missing or malformed."""
    path = Path(index_dir) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"{path}: no manifest; run `llmrec build` first") from exc
    return parse_manifest(raw, str(path))


@contextmanager
def _manifest_lock(index_dir: Path) -> Iterator[None]:
    # Shards of one folder live in different processes; the lock serialises their updates.
    with file_lock(Path(index_dir) / ".manifest.lock"):
        yield


def update_manifest(index_dir: Path, shard_no: int, files: ShardFiles) -> Manifest:
    """Swap one shard's entry in the manifest atomically (read-modify-rename under a lock)."""
    with _manifest_lock(index_dir):
        manifest = load_manifest(index_dir)
        shards = list(manifest.shards)
        shards[shard_no] = files
        manifest = replace(manifest, shards=shards, items=sum(s.items - s.deleted for s in shards))
        write_atomic(Path(index_dir) / MANIFEST_NAME, manifest.to_json().encode())
        return manifest


def check_faiss_version(manifest: Manifest, path: Path) -> None:
    """Refuse an index written by another major or a newer minor faiss; warn on older minors."""
    try:
        written = tuple(int(x) for x in manifest.faiss_version.split(".")[:2])
        running = tuple(int(x) for x in faiss.__version__.split(".")[:2])
    except ValueError as exc:
        raise IndexIntegrityError(
            f"{path}: faiss_version {manifest.faiss_version!r} is not a version"
        ) from exc
    if written[0] != running[0] or written > running:
        raise IndexIntegrityError(
            f"{path}: index written by faiss {manifest.faiss_version}, this is faiss "
            f"{faiss.__version__}; rebuild with `llmrec build` or install that faiss"
        )
    if written != running:
        log.warning(
            "%s: index written by faiss %s, loading with %s",
            path,
            manifest.faiss_version,
            faiss.__version__,
        )


def write_rows(table: pa.Table, path: Path) -> None:
    replace_atomically(path, lambda tmp: pq.write_table(table, tmp))


def build_shards(
    catalog: pa.Table,
    vectors: np.ndarray,
    out_dir: Path,
    *,
    n_shards: int,
    encoder_id: str,
    index: IndexBuildConfig | None = None,
    progress: bool = False,
    seed: int = 0,
) -> Manifest:
    """Split `catalog` (rows aligned with `vectors`) into `n_shards` indexes of one type.

    `index` defaults to exact (flat) shards. Types that need training train once
    on a seeded sample of the whole catalog. The folder is written beside
    `out_dir` under a temporary name and swapped in with renames, so a reader
    sees the old index or the new one, never a mix.
    """
    if len(catalog) != len(vectors):
        raise ValueError(f"{len(catalog)} catalog rows but {len(vectors)} vectors")
    if n_shards < 1:
        raise ValueError("n_shards must be >= 1")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = int(vectors.shape[1])
    kind, params = resolve_index(
        index or IndexBuildConfig(type="flat"), len(catalog), n_shards, dim
    )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        sample = None
        if "train_size" in params:
            rng = np.random.default_rng(seed)
            pick = rng.choice(len(vectors), params["train_size"], replace=False)
            sample = vectors[np.sort(pick)]
        template = new_index(kind, params, dim, sample)
        owner = np.array(
            [shard_of(i, n_shards) for i in catalog["item_id"].to_pylist()], dtype=np.int64
        )
        # A shard's rows are its catalog rows, in the catalog's own schema.
        rows_table = catalog.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)
        files = []
        bar = tqdm(total=len(catalog), desc=f"indexing ({kind})", unit="item", disable=not progress)
        with bar:
            for s in range(n_shards):
                rows = np.flatnonzero(owner == s)
                idx = faiss.clone_index(template)
                store = faiss.IndexFlatIP(dim) if params.get("refine") else None
                for start in range(0, len(rows), CHUNK):
                    chunk = vectors[rows[start : start + CHUNK]]
                    idx.add(chunk)
                    if store is not None:
                        store.add(chunk)
                    bar.update(len(chunk))
                stem = f"shard-{s:03d}"
                index_file, vectors_file = ShardIndex(kind, params, idx, store).write(tmp, stem)
                items_file = f"{stem}.parquet"
                write_rows(rows_table.take(rows), tmp / items_file)
                files.append(
                    ShardFiles(
                        index_file=index_file,
                        items_file=items_file,
                        items=len(rows),
                        index_sha256=sha256_of(tmp / index_file),
                        items_sha256=sha256_of(tmp / items_file),
                        vectors_file=vectors_file,
                        vectors_sha256=sha256_of(tmp / vectors_file) if vectors_file else None,
                    )
                )
        manifest = Manifest(
            dim=dim,
            metric=METRIC,
            encoder_id=encoder_id,
            items=len(catalog),
            faiss_version=faiss.__version__,
            index_type=kind,
            index_params=params,
            shards=files,
        )
        (tmp / MANIFEST_NAME).write_text(manifest.to_json())
        old = out_dir.with_name(f".{out_dir.name}-old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
