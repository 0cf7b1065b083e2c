"""The ShardRetriever Serve deployment: one per shard, queried scatter-gather by the router."""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.config import RetrieverConfig
from deployments.retriever.core import ShardRetrieverCore
from retrieval.shards import Hit

__all__ = ["ShardRetriever"]


@serve.deployment
class ShardRetriever:
    def __init__(self, index_dir: str, shard_no: int, config: dict, dim: int | None = None):
        self.core = ShardRetrieverCore(
            index_dir, shard_no, RetrieverConfig.model_validate(config), expected_dim=dim
        )

    def search(
        self, vector: np.ndarray, k: int, exclude: list[str], categories: list[str] | None
    ) -> list[Hit]:
        return self.core.search(vector, k, exclude, categories)

    def lookup(self, item_ids: list[str]) -> dict[str, tuple[Hit, np.ndarray]]:
        return self.core.lookup(item_ids)

    def check_health(self) -> None:
        self.core.check_health()
