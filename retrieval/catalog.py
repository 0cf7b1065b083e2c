"""Catalog and interaction ingest: read, validate and normalise into the llmrec parquet layout.

An ingested dataset is a directory holding two files:

- ``catalog.parquet``: ``item_id: string`` (unique, non-empty), ``title: string``,
  ``text: string``, ``categories: list<string>``, in that order.
- ``interactions.parquet``: ``user_id: string``, ``item_id: string``, ``ts: int64`` (unix
  seconds), ``event: string``, ``weight: float32``, sorted by ``(user_id, ts)``; every
  ``item_id`` exists in the catalog.

Ids are normalised to strings (``42`` and ``42.0`` become ``"42"``, whitespace is stripped).
Every problem is reported as an :class:`IngestError` naming the file, the 1-based data row and
the column. Output is written to temporary files first and moved into place only when
everything has been validated, so a failed ingest leaves the directory as it was.

The pieces live in sibling modules: :mod:`retrieval.catalog_types` (file names, schemas, the
error and report types), :mod:`retrieval.ingest_readers` (Parquet/CSV/JSON-lines input),
:mod:`retrieval.ingest_columns` (normalising raw columns), :mod:`retrieval.catalog_files`
(reading, validating and atomically writing a dataset) and :mod:`retrieval.movielens`. This
module is the entry point importers use; it re-exports their public names.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from retrieval.catalog_files import (
    check_known_items,
    read_catalog,
    read_interactions,
    write_dataset,
)
from retrieval.catalog_types import (
    CATALOG_FILE,
    CATALOG_SCHEMA,
    INTERACTIONS_FILE,
    INTERACTIONS_SCHEMA,
    IngestError,
    IngestReport,
)
from retrieval.ingest_columns import build_catalog, build_interactions
from retrieval.ingest_readers import Format, read_table
from retrieval.movielens import ingest_movielens

__all__ = [
    "CATALOG_FILE",
    "CATALOG_SCHEMA",
    "INTERACTIONS_FILE",
    "INTERACTIONS_SCHEMA",
    "IngestError",
    "IngestReport",
    "ingest_movielens",
    "ingest_table",
    "read_catalog",
    "read_interactions",
    "write_dataset",
]


def ingest_table(
    catalog: Path,
    out_dir: Path,
    *,
    interactions: Path | None = None,
    fmt: Format = "auto",
    id_col: str = "item_id",
    title_col: str = "title",
    text_col: str | None = "text",
    category_col: str | None = "categories",
    category_sep: str = "|",
    user_col: str = "user_id",
    item_col: str | None = None,
    ts_col: str = "ts",
    event_col: str | None = None,
    weight_col: str | None = None,
    drop_unknown: bool = False,
) -> IngestReport:
    """Ingest a catalog file (and optionally an interaction log) into ``out_dir``.

    ``fmt="auto"`` picks the reader from each file's suffix (.parquet, .csv, .jsonl/.json,
    optionally compressed). ``text_col`` and ``category_col`` are optional: when absent, text
    is the title and categories are empty. Categories may be a list column or a string split on
    ``category_sep``. ``item_col`` names the item column of the interaction log and defaults to
    ``id_col``. Without ``event_col`` every event is ``"interact"``; without ``weight_col``
    every weight is 1.0. Interactions naming items missing from the catalog raise
    :class:`IngestError`, unless ``drop_unknown`` drops them (counted in ``dropped``).
    Raises :class:`IngestError` for any unreadable or invalid input; nothing is written then.
    """
    catalog = Path(catalog)
    raw_catalog = read_table(catalog, fmt, string_cols=[id_col, title_col, text_col, category_col])
    items = build_catalog(
        raw_catalog,
        catalog,
        id_col=id_col,
        title_col=title_col,
        text_col=text_col,
        category_col=category_col,
        category_sep=category_sep,
    )
    events: pa.Table | None = None
    dropped = 0
    if interactions is not None:
        interactions = Path(interactions)
        item_col = item_col or id_col
        raw_events = read_table(interactions, fmt, string_cols=[user_col, item_col, event_col])
        events = build_interactions(
            raw_events,
            interactions,
            user_col=user_col,
            item_col=item_col,
            ts_col=ts_col,
            event_col=event_col,
            weight_col=weight_col,
        )
        events, dropped = check_known_items(
            events, items["item_id"], interactions, item_col, drop_unknown=drop_unknown
        )
    return write_dataset(out_dir, items, events, dropped=dropped)
