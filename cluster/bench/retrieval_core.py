"""The retrieval benchmark without Ray: synthetic data, ground truth, the variants, recall.

`llmrec bench retrieval` (`cluster.bench.retrieval`) serves each variant from
real ShardRetriever deployments and drives them with `cluster.bench.driver`;
everything else it measures with is here, so it is tested without a cluster.

Data: N item vectors and Q query vectors drawn the same way, seeded: a point
is one of 1,000 cluster centres (each drawn unit-normal per dimension) plus
noise of standard deviation 0.6 per dimension, L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from retrieval.config import IndexBuildConfig, RetrieverConfig
from retrieval.shards import load_manifest

__all__ = [
    "BenchResult",
    "Variant",
    "default_variants",
    "exact_top_k",
    "index_bytes",
    "make_data",
    "mean_recall_at_k",
    "synthetic_catalog",
]

N_CLUSTERS = 1000
NOISE = 0.6
CHUNK = 100_000


def make_data(
    n_items: int, n_queries: int, dim: int, *, seed: int = 0, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Item and query vectors (float32, unit norm) from the same seeded Gaussian clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLUSTERS, dim), dtype=np.float32)

    def draw(n: int, bar: tqdm | None = None) -> np.ndarray:
        out = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x = centres[rng.integers(0, N_CLUSTERS, m)]
            x += NOISE * rng.standard_normal((m, dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start : start + m] = x
            if bar is not None:
                bar.update(m)
        return out

    with tqdm(total=n_items, desc="vectors", unit="vec", disable=not progress) as bar:
        items = draw(n_items, bar)
    return items, draw(n_queries)


def synthetic_catalog(n: int) -> pa.Table:
    """Rows for `n` synthetic items: ids "0".."n-1", a title, no text, one of 10 categories."""
    ids = [str(i) for i in range(n)]
    return pa.table(
        {
            "item_id": ids,
            "title": [f"item {i}" for i in ids],
            "text": [""] * n,
            "categories": [[f"c{i % 10}"] for i in range(n)],
        }
    )


def exact_top_k(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-k items by inner product, per query (the ground truth)."""
    _, ids = faiss.knn(queries, items, k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def mean_recall_at_k(found: Sequence[Sequence[str]], truth: np.ndarray, k: int) -> float:
    """Mean share of the true top-k ids (row numbers, item id = str(row)) found per query."""
    if not len(found):
        return 0.0
    hits = [
        len({str(i) for i in t[:k]} & set(f[:k])) / k for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))


def index_bytes(index_dir: Path) -> tuple[int, int]:
    """(bytes of the index files held in memory, bytes of memory-mapped full-vector files)."""
    index_dir = Path(index_dir)
    manifest = load_manifest(index_dir)
    memory = sum((index_dir / s.index_file).stat().st_size for s in manifest.shards)
    mapped = sum(
        (index_dir / s.vectors_file).stat().st_size for s in manifest.shards if s.vectors_file
    )
    return memory, mapped


@dataclass(frozen=True)
class Variant:
    """One index build and the search settings to measure on it."""

    name: str
    spec: IndexBuildConfig
    settings: list[RetrieverConfig]


def default_variants(types: Sequence[str], dim: int) -> list[Variant]:
    """The index builds and settings `llmrec bench retrieval` shows, for the given types."""
    pq_small, pq_large = dim // 8, dim // 4
    table = {
        "flat": [Variant("flat", IndexBuildConfig(type="flat"), [RetrieverConfig()])],
        "hnsw": [
            Variant(
                "hnsw",
                IndexBuildConfig(type="hnsw", hnsw_m=32, hnsw_ef_construction=80),
                [RetrieverConfig(ef_search=ef) for ef in (16, 32, 64, 128)],
            )
        ],
        "ivfsq": [
            Variant(
                "ivfsq",
                IndexBuildConfig(type="ivfsq", sq_bits=8),
                [RetrieverConfig(nprobe=n) for n in (4, 16, 64)],
            )
        ],
        "ivfpq": [
            Variant(
                f"ivfpq{pq_small}",
                IndexBuildConfig(type="ivfpq", pq_m=pq_small),
                [RetrieverConfig(nprobe=16)],
            ),
            Variant(
                f"ivfpq{pq_large}",
                IndexBuildConfig(type="ivfpq", pq_m=pq_large),
                [RetrieverConfig(nprobe=16)],
            ),
            Variant(
                f"ivfpq{pq_small}+refine",
                IndexBuildConfig(type="ivfpq", pq_m=pq_small, pq_refine=True),
                [RetrieverConfig(nprobe=16, refine_k_factor=f) for f in (8, 16, 32)],
            ),
        ],
    }
    return [v for t in types for v in table[t]]


@dataclass
class BenchResult:
    """One row of the benchmark's JSON and table."""

    index: str
    variant: str
    params: dict
    concurrency: int
    recall_at_10: float
    p50_ms: float
    p99_ms: float
    memory_bytes: int
    build_s: float
    mapped_bytes: int = 0
    qps: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)
