"""Request material drawn from the deployed dataset, so load looks like real traffic.

`TrafficData.from_data_dir` reads `catalog.parquet` and `interactions.parquet`
of a dataset folder (the layout `llmrec ingest` writes): user ids with their
histories (oldest first), item ids, categories, and free-text queries cut from
the catalog text. `TrafficData.synthetic` makes ids in the demo's shape
("1".."n") for when no dataset is at hand; the service may answer some of
those with 404.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from loadtest.errors import LoadtestError

__all__ = ["TrafficData"]

_LEADING = {"a", "an", "the"}


@dataclass
class TrafficData:
    """Users, their histories, items, categories and queries to build requests from."""

    users: list[str]
    histories: dict[str, list[str]]
    items: list[str]
    categories: list[str]
    queries: list[str]
    source: str = "synthetic"
    _users_with_history: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.users or not self.items or not self.queries:
            raise LoadtestError("traffic data needs at least one user, item and query")
        self._users_with_history = [u for u in self.users if self.histories.get(u)]

    @classmethod
    def from_data_dir(
        cls, data_dir: Path, *, extra_queries: list[str] | None = None, seed: int = 0
    ) -> TrafficData:
        """Read a dataset folder; raises LoadtestError when catalog.parquet is missing."""
        data_dir = Path(data_dir)
        catalog_path = data_dir / "catalog.parquet"
        if not catalog_path.exists():
            raise LoadtestError(f"{catalog_path}: no catalog; run `llmrec ingest` first")
        catalog = pq.read_table(catalog_path, columns=["item_id", "text", "categories"])
        items = catalog["item_id"].to_pylist()
        counts: Counter[str] = Counter(
            c for cats in catalog["categories"].to_pylist() for c in cats or []
        )
        rng = random.Random(seed)
        texts = catalog["text"].to_pylist()
        queries = [q for q in (_query_from_text(t, rng) for t in texts[:5000]) if q]
        histories: dict[str, list[str]] = {}
        log_path = data_dir / "interactions.parquet"
        if log_path.exists():
            log = pq.read_table(log_path, columns=["user_id", "item_id", "ts"]).sort_by(
                [("user_id", "ascending"), ("ts", "ascending")]
            )
            for user, item in zip(
                log["user_id"].to_pylist(), log["item_id"].to_pylist(), strict=True
            ):
                histories.setdefault(user, []).append(item)
        users = list(histories) or [str(i) for i in range(1, 101)]
        return cls(
            users=users,
            histories=histories,
            items=items,
            categories=[c for c, _ in counts.most_common()],
            queries=(extra_queries or []) + queries,
            source=str(data_dir),
        )

    @classmethod
    def synthetic(
        cls,
        n_users: int = 500,
        n_items: int = 2000,
        *,
        extra_queries: list[str] | None = None,
        seed: int = 0,
    ) -> TrafficData:
        """Ids "1".."n" with random histories, for when no dataset folder is available."""
        rng = random.Random(seed)
        items = [str(i) for i in range(1, n_items + 1)]
        users = [str(i) for i in range(1, n_users + 1)]
        histories = {u: rng.sample(items, k=min(len(items), rng.randint(3, 30))) for u in users}
        queries = extra_queries or [
            "a slow-burn space drama about astronauts far from home",
            "funny family movie for a rainy weekend",
            "true story about engineers and a big discovery",
            "dark thriller with a detective in a small town",
            "cooking show with a tough chef",
        ]
        return cls(
            users=users,
            histories=histories,
            items=items,
            categories=["Drama", "Comedy", "Documentary", "Sci-Fi", "Horror"],
            queries=list(queries),
        )

    def pick_user(self, rng: random.Random, *, with_history: bool = False) -> str:
        pool = self._users_with_history if with_history and self._users_with_history else self.users
        return rng.choice(pool)

    def history_of(self, user: str, rng: random.Random, limit: int) -> list[str]:
        """The user's most recent `limit` items (oldest first); random items when unknown."""
        history = self.histories.get(user)
        if history:
            return history[-limit:]
        return rng.sample(self.items, k=min(len(self.items), max(1, min(limit, 5))))


def _query_from_text(text: str | None, rng: random.Random) -> str | None:
    """A 4-8 word span of an item description, the way people describe what they want."""
    words = (text or "").replace(",", " ").replace(".", " ").split()
    if words and words[0].lower() in _LEADING:
        words = words[1:]
    if len(words) < 4:
        return None
    n = rng.randint(4, min(8, len(words)))
    start = rng.randint(0, len(words) - n)
    return " ".join(words[start : start + n])
