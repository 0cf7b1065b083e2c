"""`llmrec ingest synthetic`: a large dataset with its index, for measuring the serving path.

Encoding a million catalog texts takes hours on a small CPU; what the serving
path costs does not depend on what the vectors mean. This writes a dataset
folder the app serves as it is: `catalog.parquet` (ids, short titles and texts
from a small vocabulary, one of 20 categories), item vectors drawn from seeded
Gaussian clusters (`retrieval_core.make_data`) indexed into shards of the
configured type (default `ivfsq`), an interaction log (users with a
power-law number of items, popular items taken more often, increasing
timestamps) and the collaborative models fit on it. `llmrec build` on the
folder would replace the vectors with encoded ones.

    llmrec ingest synthetic --items 1000000 --users 20000 --out data/synthetic-1m
    llmrec up --data data/synthetic-1m
    llmrec bench pipeline --data data/synthetic-1m --concurrency 1 16
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.bench.retrieval_core import make_data
from retrieval.config import IndexBuildConfig

__all__ = ["SyntheticReport", "make_synthetic_dataset"]

_WORDS = [
    "quiet",
    "storm",
    "river",
    "city",
    "night",
    "garden",
    "winter",
    "signal",
    "engine",
    "harbor",
    "forest",
    "echo",
    "glass",
    "orbit",
    "desert",
    "market",
    "shadow",
    "lantern",
    "voyage",
    "canyon",
    "meadow",
    "circuit",
    "ember",
    "tide",
]


@dataclass(frozen=True)
class SyntheticReport:
    catalog_path: Path
    interactions_path: Path
    items: int
    interactions: int
    users: int
    dropped: int = 0


def make_synthetic_dataset(
    out: Path,
    *,
    n_items: int,
    n_users: int,
    dim: int = 384,
    n_shards: int = 4,
    index_type: str = "ivfsq",
    seed: int = 0,
    encoder_id: str = "all-MiniLM-L6-v2",
    progress: bool = True,
) -> SyntheticReport:
    """Write the dataset folder `out` with `index/` (see the module docstring)."""
    from retrieval.build import fit_collaborative
    from retrieval.index_files import build_shards

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = np.arange(n_items).astype(str)
    words = np.asarray(_WORDS)
    picks = rng.integers(0, len(words), (n_items, 6))
    texts = [" ".join(row) for row in words[picks]]
    catalog = pa.table(
        {
            "item_id": pa.array(ids, pa.string()),
            "title": [f"{w[0].title()} {w[1]} {i}" for w, i in zip(words[picks], ids, strict=True)],
            "text": texts,
            "categories": [[f"c{i % 20}"] for i in range(n_items)],
        }
    )
    pq.write_table(catalog, out / "catalog.parquet")
    vectors, _ = make_data(n_items, 0, dim, seed=seed, progress=progress)
    build_shards(
        catalog,
        vectors,
        out / "index",
        n_shards=n_shards,
        encoder_id=encoder_id,
        index=IndexBuildConfig(type=index_type),
        progress=progress,
        seed=seed,
    )
    # A power-law of activity (a few users with thousands of items), popular items favoured.
    lengths = np.minimum(rng.zipf(1.6, n_users) * 5, 3000)
    users = np.repeat(np.arange(n_users).astype(str), lengths)
    items = (np.minimum(rng.zipf(1.2, len(users)), n_items) - 1).astype(str)
    ts = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64) + 1_700_000_000
    log = pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "ts": ts,
            "event": pa.array(["interact"] * len(users), pa.string()),
            "weight": pa.array(np.ones(len(users), np.float32)),
        }
    )
    pq.write_table(log, out / "interactions.parquet")
    fit_collaborative(log.select(["user_id", "item_id"]), catalog["item_id"].to_pylist()).save(
        out / "index"
    )
    return SyntheticReport(
        out / "catalog.parquet", out / "interactions.parquet", n_items, len(log), n_users
    )
