"""ShardRetriever core: one FAISS shard answering searches and lookups, without Ray."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from deployments.config import RetrieverConfig
from retrieval.shards import Hit, Shard

__all__ = ["ShardRetrieverCore"]


class ShardRetrieverCore:
    """Loads shard `shard_no` of `index_dir` (verified against the manifest) and searches it.

    Construction raises `IndexIntegrityError` naming the file when the shard is
    missing, corrupt or of another dimension, so a bad index never serves.
    """

    def __init__(
        self,
        index_dir: Path,
        shard_no: int,
        config: RetrieverConfig,
        expected_dim: int | None = None,
    ) -> None:
        faiss.omp_set_num_threads(config.faiss_threads)
        self.config = config
        self.shard_no = shard_no
        self.shard = Shard.load(Path(index_dir), shard_no, expected_dim=expected_dim)
        self._probe = self.shard.index.reconstruct(0) if len(self.shard) else None

    def search(
        self,
        vector: np.ndarray,
        k: int,
        exclude: Sequence[str] = (),
        categories: Sequence[str] | None = None,
    ) -> list[Hit]:
        return self.shard.search(vector, k, exclude=exclude, categories=categories)

    def lookup(self, item_ids: Sequence[str]) -> dict[str, tuple[Hit, np.ndarray]]:
        return self.shard.lookup(item_ids)

    def check_health(self) -> None:
        """A real search for one of the shard's own vectors must find that item first."""
        if self._probe is None:
            return
        hits = self.shard.search(self._probe, 1)
        if not hits or hits[0].score < 0.99:
            raise RuntimeError(f"shard {self.shard_no} probe search failed: {hits}")
