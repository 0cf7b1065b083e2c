"""Small data the tests make: catalogs, vectors, shard folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from retrieval.shards import build_shards

CATEGORIES = ["Drama", "Comedy", "Horror", "Western"]


def make_catalog(n: int, categories: list[str] = CATEGORIES) -> pa.Table:
    ids = [str(i + 1) for i in range(n)]
    cats = [[categories[i % len(categories)]] for i in range(n)]
    return pa.table(
        {
            "item_id": ids,
            "title": [f"Item {i}" for i in ids],
            "text": [f"A {c[0].lower()} story number {i}." for i, c in zip(ids, cats, strict=True)],
            "categories": cats,
        }
    )


def make_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_shards(path: Path, n: int, dim: int, n_shards: int, seed: int = 0):
    """Write an index folder; returns (catalog, vectors, manifest)."""
    catalog = make_catalog(n)
    vectors = make_vectors(n, dim, seed)
    manifest = build_shards(catalog, vectors, path, n_shards=n_shards, encoder_id="test")
    return catalog, vectors, manifest
