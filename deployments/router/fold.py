"""`llmrec build --incremental`: fold the feedback received into the log and refit the models.

The events the user store recorded since the last fold (`feedback.jsonl` with
the `local` store, the Redis event stream with `redis`) become rows of
`interactions.parquet` (event name, weight 1), the file rewritten atomically;
then item-kNN, ALS and EASE are fit again on the whole log and written beside
the shards, where running router replicas pick them up within
`router.model_reload_s` without a restart. The shards are not touched (items
change live through `POST /v1/items`).

A fold is safe to repeat: an event whose (user, item, ts) row is in the log
already is not added twice, so a fold cut short between the log's rewrite and
the store's acknowledgement loses nothing and duplicates nothing. With the
`local` store the feedback file is held locked from the read to its
truncation; replicas taking feedback meanwhile wait for it (the log rewrite,
not the model fit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deployments.router.feedback import FEEDBACK_FILE, FeedbackLog
from deployments.router.schemas import FeedbackEvent
from retrieval.config import AppConfig
from retrieval.integrity import fsync_dir, replace_atomically

__all__ = ["FoldResult", "fold_feedback"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldResult:
    events: int
    """Events the store held."""
    added: int
    """Rows added to the log (events already in it are not added again)."""
    interactions: int
    """Rows of the log after the fold."""


def _append(path: Path, events: list[FeedbackEvent]) -> tuple[int, int]:
    """Add the events not yet in the log at `path` as rows; (added, rows after)."""
    old = pq.read_table(path) if path.exists() else None
    have: set[tuple[str, str, int]] = set()
    if old is not None:
        users = pa.array(sorted({e.user_id for e in events}), pa.string())
        mine = old.filter(pc.is_in(old["user_id"], value_set=users))
        have = set(
            zip(
                mine["user_id"].to_pylist(),
                mine["item_id"].to_pylist(),
                mine["ts"].to_pylist(),
                strict=True,
            )
        )
    new = [e for e in events if (e.user_id, e.item_id, e.ts) not in have]
    if not new:
        return 0, len(old) if old is not None else 0
    rows = pa.table(
        {
            "user_id": pa.array([e.user_id for e in new], pa.string()),
            "item_id": pa.array([e.item_id for e in new], pa.string()),
            "ts": pa.array([e.ts for e in new], pa.int64()),
            "event": pa.array([e.event for e in new], pa.string()),
            "weight": pa.array([1.0] * len(new), pa.float32()),
        }
    )
    table = rows
    if old is not None:
        # The log's own columns and types; ones the events do not have are null.
        names = [n for n in rows.column_names if n in old.column_names]
        rows = rows.select(names).cast(pa.schema([old.schema.field(n) for n in names]))
        table = pa.concat_tables([old, rows], promote_options="default")
    replace_atomically(path, lambda tmp: pq.write_table(table, tmp))
    fsync_dir(path.parent)
    return len(new), len(table)


def fold_feedback(config: AppConfig) -> FoldResult:
    """Fold the store's unfolded events into the log, then refit the collaborative models
    (also when there was nothing to fold: the models then match the log as it is)."""
    path = config.data_path / "interactions.parquet"
    if config.router.user_store == "redis":
        from deployments.router.store import RedisStore

        store = RedisStore(config)
        try:
            events, last_id = store.unfolded()
            added, rows = _append(path, events)
            if last_id is not None:
                store.folded(last_id)
        finally:
            store.close()
    else:
        feedback = FeedbackLog(config.data_path / FEEDBACK_FILE)
        with feedback.locked():
            events = list(feedback.replay())
            added, rows = _append(path, events)
            if events:
                replace_atomically(feedback.path, lambda tmp: Path(tmp).write_bytes(b""))
                fsync_dir(feedback.path.parent)
    from retrieval.build import refit_collaborative

    catalog = pq.read_table(config.data_path / "catalog.parquet", columns=["item_id"])
    refit_collaborative(
        config.data_path,
        catalog["item_id"].to_pylist(),
        sequential_budget_s=config.router.sequential_budget_s,
    )
    log.info("folded %d events (%d new rows) into %s", len(events), added, path)
    return FoldResult(len(events), added, rows)
