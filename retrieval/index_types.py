"""Index types of a shard: how each is made, checked after loading and searched.

Four types, all over unit vectors with the inner-product metric, all made by
`faiss.index_factory`, and all using ids = row positions in the shard:

| type | factory | memory per vector (384 dims) | notes |
| --- | --- | --- | --- |
| `flat` | `Flat` | 1536 B | exact |
| `hnsw` | `HNSW{M},Flat` | 1536 B + ~8·M B of graph | `ef_search` trades recall for time |
| `ivfsq` | `IVF{nlist},SQ8` | 384 B (+8 B id map) | `nprobe` trades recall for time |
| `ivfpq` | `IVF{nlist},PQ{m}x{nbits}` | m B (+8 B) | optional exact re-ranking against the |
|  |  |  | full vectors, memory-mapped from disk |

`retriever.index` (`IndexBuildConfig`) is the build-time choice, recorded in the
manifest; the search-time knobs (`nprobe`, `ef_search`, `refine_k_factor`,
`exact_filter_fraction`) are read from the serving `RetrieverConfig` and change
without a reload.
Filters come in as a FAISS `IDSelector` over row positions; a selector that
lets few rows through is answered by an exhaustive scan over those rows, so a
filtered query still fills k when k rows qualify.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.config import INDEX_TYPES, IndexBuildConfig, RetrieverConfig
from retrieval.integrity import IndexIntegrityError, replace_atomically

__all__ = [
    "AUTO_FLAT_MAX_PER_SHARD",
    "ShardIndex",
    "new_index",
    "resolve_index",
]

AUTO_FLAT_MAX_PER_SHARD = 100_000
"""`auto` builds exact shards up to this many items per shard, IVF-SQ8 above."""
MAX_FILTERED_EF = 1024
CHUNK = 65_536

_CLASSES: dict[str, tuple[type, ...]] = {
    "flat": (faiss.IndexFlat,),
    "hnsw": (faiss.IndexHNSWFlat,),
    "ivfsq": (faiss.IndexIVFScalarQuantizer,),
    "ivfpq": (faiss.IndexIVFPQ,),
}
assert set(_CLASSES) == set(INDEX_TYPES), "every index type needs its FAISS classes"


def _pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def resolve_index(
    spec: IndexBuildConfig, n_items: int, n_shards: int, dim: int
) -> tuple[str, dict]:
    """The concrete index type and its build params (incl. the factory string) for a catalog.

    Raises ValueError naming the setting to change when the spec cannot work.
    """
    per_shard = max(1, math.ceil(n_items / max(n_shards, 1)))
    kind = spec.type
    if kind == "auto":
        kind = "flat" if per_shard <= AUTO_FLAT_MAX_PER_SHARD else "ivfsq"
    if kind not in INDEX_TYPES:
        raise ValueError(f"retriever.index.type: unknown index type {kind!r}; one of {INDEX_TYPES}")
    if kind == "flat":
        return kind, {"factory": "Flat"}
    if kind == "hnsw":
        m, efc = spec.hnsw_m, spec.hnsw_ef_construction
        return kind, {"factory": f"HNSW{m},Flat", "M": m, "ef_construction": efc}
    train_n = min(n_items, spec.train_size)
    nlist = spec.ivf_nlist or _pow2(2 * math.sqrt(per_shard))
    # k-means wants ~39 training points per list; fewer lists than that on tiny catalogs.
    nlist = max(1, min(nlist, train_n // 39 or 1))
    params: dict[str, Any] = {"nlist": nlist, "train_size": train_n}
    if kind == "ivfsq":
        return kind, {"factory": f"IVF{nlist},SQ{spec.sq_bits}", **params, "sq_bits": spec.sq_bits}
    if dim % spec.pq_m:
        raise ValueError(
            f"retriever.index.pq_m: {spec.pq_m} does not divide the dimension {dim}; "
            f"pick a divisor such as {dim // 8} or {dim // 4}"
        )
    return kind, {
        "factory": f"IVF{nlist},PQ{spec.pq_m}x{spec.pq_nbits}",
        **params,
        "pq_m": spec.pq_m,
        "pq_nbits": spec.pq_nbits,
        "refine": spec.pq_refine,
    }


def new_index(kind: str, params: dict, dim: int, sample: np.ndarray | None = None) -> faiss.Index:
    """An empty index of `kind`, trained on `sample` when the type needs training.

    Shards of one catalog clone one trained template: they hold slices of the
    same distribution, so one training run serves them all.
    """
    index = faiss.index_factory(dim, params["factory"], faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efConstruction = params["ef_construction"]
    if not index.is_trained:
        if sample is None or not len(sample):
            raise ValueError(f"{kind} index needs training vectors")
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    if kind in ("ivfsq", "ivfpq"):
        index.make_direct_map()  # reconstruct(row) for lookups
    return index


def _write_index(index: faiss.Index, path: Path) -> None:
    replace_atomically(path, lambda tmp: faiss.write_index(index, tmp))


class ShardIndex:
    """A shard's read-only FAISS index: approximate and exhaustive search over row positions.

    `index` holds rows 0..ntotal-1. `store`, for IVF-PQ with refinement, is an
    exact IndexFlatIP of the same rows, memory-mapped from disk: candidates of
    the compressed search are re-ranked against it, and lookups read it. Nothing
    mutates after construction, so concurrent searches need no lock;
    `with_vectors` returns a new object.
    """

    def __init__(
        self,
        kind: str,
        params: dict,
        index: faiss.Index,
        store: faiss.Index | None = None,
        *,
        use_gpu: bool = False,
    ) -> None:
        self.kind, self.params, self.index, self.store = kind, params, index, store
        self.d: int = index.d
        self.ntotal: int = index.ntotal
        self.nlist: int = getattr(index, "nlist", 0)
        self._refine = faiss.IndexRefine(index, store) if store is not None else None
        self._storage = faiss.downcast_index(index.storage) if kind == "hnsw" else None
        self._gpu = self._to_gpu() if use_gpu else None

    def _to_gpu(self) -> faiss.Index | None:
        # Only unfiltered flat/IVF searches run on the GPU copy (faiss-gpu builds only);
        # filtered ones stay on the CPU index, whose selectors cover every type.
        if self.kind == "hnsw" or faiss.get_num_gpus() == 0 or self.ntotal == 0:
            return None
        self._gpu_res = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_res, 0, self.index)

    @classmethod
    def read(
        cls,
        path: Path,
        kind: str,
        params: dict,
        *,
        dim: int,
        rows: int,
        vectors_path: Path | None = None,
        use_gpu: bool = False,
    ) -> ShardIndex:
        """Load and check an index file (and its memory-mapped vectors file, if any).

        Raises IndexIntegrityError naming the file when it is unreadable or its
        type, metric, dimension, row count or lists disagree with the manifest.
        """
        if kind not in _CLASSES:
            raise IndexIntegrityError(f"{path}: unknown index_type {kind!r} in the manifest")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexIntegrityError(f"{path}: unreadable ({_first_line(exc)})") from exc
        if kind == "flat" and isinstance(index, faiss.IndexIDMap2):
            index = _unwrap_positions(index, path)
        want = f"index_type {kind!r} ({params.get('factory')})"
        if not isinstance(index, _CLASSES[kind]):
            raise IndexIntegrityError(
                f"{path}: manifest says {want} but the file holds {type(index).__name__}"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexIntegrityError(f"{path}: metric is not inner product")
        if index.d != dim:
            raise IndexIntegrityError(f"{path}: dim {index.d}, manifest says {dim}")
        if index.ntotal != rows:
            raise IndexIntegrityError(f"{path}: {index.ntotal} vectors, manifest says {rows}")
        if kind in ("ivfsq", "ivfpq"):
            if index.nlist != params.get("nlist"):
                raise IndexIntegrityError(
                    f"{path}: {index.nlist} lists, manifest says {params.get('nlist')}"
                )
            if kind == "ivfpq" and params.get("pq_m") != index.pq.M:
                raise IndexIntegrityError(
                    f"{path}: PQ code of {index.pq.M} bytes, manifest says {params.get('pq_m')}"
                )
            if index.direct_map.type == faiss.DirectMap.NoMap:
                index.make_direct_map()
        store = None
        if vectors_path is not None:
            try:
                store = faiss.read_index(str(vectors_path), faiss.IO_FLAG_MMAP_IFC)
            except RuntimeError as exc:
                raise IndexIntegrityError(
                    f"{vectors_path}: unreadable ({_first_line(exc)})"
                ) from exc
            if not isinstance(store, faiss.IndexFlat) or (store.d, store.ntotal) != (dim, rows):
                raise IndexIntegrityError(
                    f"{vectors_path}: expected {rows} flat vectors of dim {dim}, "
                    f"found {type(store).__name__} with {store.ntotal} of dim {store.d}"
                )
        return cls(kind, params, index, store, use_gpu=use_gpu)

    def write(self, directory: Path, stem: str) -> tuple[str, str | None]:
        """Write `stem.faiss` (and `stem.vectors.faiss`) atomically; returns the file names."""
        index_file = f"{stem}.faiss"
        _write_index(self.index, Path(directory) / index_file)
        vectors_file = None
        if self.store is not None:
            vectors_file = f"{stem}.vectors.faiss"
            _write_index(self.store, Path(directory) / vectors_file)
        return index_file, vectors_file

    def with_vectors(self, vectors: np.ndarray) -> ShardIndex:
        """A copy with `vectors` appended as rows ntotal, ntotal+1, … (for snapshots)."""
        index = faiss.clone_index(self.index)
        if len(vectors):
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        store = None
        if self.store is not None:
            # The memory-mapped store is read-only: copy its rows into a new one.
            store = faiss.IndexFlatIP(self.d)
            for start in range(0, self.ntotal, CHUNK):
                store.add(self.store.reconstruct_n(start, min(CHUNK, self.ntotal - start)))
            if len(vectors):
                store.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return ShardIndex(self.kind, self.params, index, store)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of `rows`: exact for flat, hnsw and refined ivfpq; decoded otherwise."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, self.d), np.float32)
        source = self.store if self.store is not None else self.index
        return source.reconstruct_batch(rows)

    def _params(
        self, settings: RetrieverConfig, sel: faiss.IDSelector | None, k: int, fraction: float
    ) -> tuple[faiss.SearchParameters | None, list]:
        """Per-call search parameters, widened when a selector rejects part of the shard.

        Returns the parameters and the objects they point to (kept alive for the call).
        """
        widen = 1.0 / max(fraction, 1e-6)
        if self.kind == "flat":
            return (faiss.SearchParameters(sel=sel) if sel is not None else None), []
        if self.kind == "hnsw":
            ef = max(settings.ef_search, k)
            ef = min(max(ef, int(ef * widen)), max(MAX_FILTERED_EF, ef))
            return faiss.SearchParametersHNSW(efSearch=ef, sel=sel), []
        nprobe = min(self.nlist, max(1, math.ceil(settings.nprobe * widen)))
        ivf = faiss.SearchParametersIVF(nprobe=nprobe, sel=sel)
        if self._refine is None:
            return ivf, []
        # The selector must sit in the base index's parameters: IndexRefine ignores its own.
        refine = faiss.IndexRefineSearchParameters(
            k_factor=settings.refine_k_factor, base_index_params=ivf
        )
        return refine, [ivf]

    def search(
        self,
        query: np.ndarray,
        k: int,
        settings: RetrieverConfig,
        sel: faiss.IDSelector | None = None,
        fraction: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k `(scores, rows)` of a `(1, d)` query; rows -1 pad a short answer.

        `fraction` is the share of rows `sel` lets through; the beam (ef) or the
        probed lists grow with its inverse so a filtered search keeps its recall.
        """
        params, _keep = self._params(settings, sel, k, fraction)
        if self._gpu is not None and sel is None:
            return self._gpu.search(query, k)
        index = self._refine if self._refine is not None else self.index
        return index.search(query, k, params=params)

    def exhaustive(
        self,
        query: np.ndarray,
        k: int,
        settings: RetrieverConfig,
        sel: faiss.IDSelector | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over every row `sel` lets through (exact scores where full vectors exist).

        IVF without stored vectors scans all lists, so it fills k but ranks by the
        compressed scores.
        """
        plain = faiss.SearchParameters(sel=sel) if sel is not None else None
        if self.kind == "flat":
            return self.index.search(query, k, params=plain)
        if self._storage is not None:
            return self._storage.search(query, k, params=plain)
        if self.store is not None:
            return self.store.search(query, k, params=plain)
        return self.index.search(
            query, k, params=faiss.SearchParametersIVF(nprobe=self.nlist, sel=sel)
        )


def _unwrap_positions(index: faiss.IndexIDMap2, path: Path) -> faiss.Index:
    """The inner index of an id map over positions 0..n-1 (how older builds wrote flat shards)."""
    ids = faiss.vector_to_array(index.id_map)
    if not np.array_equal(ids, np.arange(len(ids))):
        raise IndexIntegrityError(f"{path}: ids are not the row positions 0..{len(ids) - 1}")
    inner = faiss.downcast_index(index.index)
    inner.referenced_objects = [index]  # the id map owns the inner index
    return inner


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
