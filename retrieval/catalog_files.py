"""Reading and writing an ingested dataset directory, checked against its schemas.

Tables are conformed to :data:`~retrieval.catalog_types.CATALOG_SCHEMA` /
:data:`~retrieval.catalog_types.INTERACTIONS_SCHEMA` and validated on the way in and out;
writes are staged under temporary names and moved into place only when every file is complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retrieval.catalog_types import (
    CATALOG_FILE,
    CATALOG_SCHEMA,
    INTERACTIONS_FILE,
    INTERACTIONS_SCHEMA,
    IngestError,
    IngestReport,
)
from retrieval.ingest_columns import (
    check_unique,
    decode_dictionary,
    first_true,
    raise_at,
    require_column,
)
from retrieval.ingest_readers import read_table

__all__ = ["check_known_items", "read_catalog", "read_interactions", "write_dataset"]


def read_catalog(path: Path) -> pa.Table:
    """Read a ``catalog.parquet`` written by ingest, in :data:`CATALOG_SCHEMA`.

    Extra columns are left out. Raises :class:`IngestError` if the file is unreadable, a column
    is missing or of the wrong type, an id is empty, or ids repeat.
    """
    path = Path(path)
    table = read_table(path, "parquet")
    table = _conform(table, CATALOG_SCHEMA, path)
    _validate_catalog(table, path)
    return table


def read_interactions(path: Path) -> pa.Table:
    """Read an ``interactions.parquet`` written by ingest, in :data:`INTERACTIONS_SCHEMA`.

    Extra columns are left out. Raises :class:`IngestError` if the file is unreadable, a column
    is missing or of the wrong type, or a value is null or an id empty.
    """
    path = Path(path)
    table = read_table(path, "parquet")
    table = _conform(table, INTERACTIONS_SCHEMA, path)
    _validate_interactions(table, path)
    return table


def write_dataset(
    out_dir: Path,
    catalog: pa.Table,
    interactions: pa.Table | None = None,
    *,
    dropped: int = 0,
    extra_files: Mapping[str, bytes] | None = None,
) -> IngestReport:
    """Validate and atomically write a dataset into ``out_dir`` (created if needed).

    ``catalog`` and ``interactions`` must already be in :data:`CATALOG_SCHEMA` /
    :data:`INTERACTIONS_SCHEMA` (extra columns are dropped); interactions are sorted by
    ``(user_id, ts)`` here. ``extra_files`` maps file names in ``out_dir`` to their contents.
    Every file is written to a temporary name first and moved into place only when all of them
    are complete; on any failure the directory is left as it was. Without ``interactions`` a
    stale ``interactions.parquet`` is removed so the directory holds one consistent dataset.
    Raises :class:`IngestError` when the tables break the contract.
    """
    out_dir = Path(out_dir)
    catalog_path = out_dir / CATALOG_FILE
    interactions_path = out_dir / INTERACTIONS_FILE
    catalog = _conform(catalog, CATALOG_SCHEMA, catalog_path)
    _validate_catalog(catalog, catalog_path)
    n_users = 0
    if interactions is not None:
        interactions = _conform(interactions, INTERACTIONS_SCHEMA, interactions_path)
        _validate_interactions(interactions, interactions_path)
        check_known_items(interactions, catalog["item_id"], interactions_path, "item_id")
        interactions = interactions.sort_by([("user_id", "ascending"), ("ts", "ascending")])
        n_users = pc.count_distinct(interactions["user_id"]).as_py()

    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        if interactions is not None:
            staged.append((_stage_parquet(interactions, out_dir), interactions_path))
        staged.append((_stage_parquet(catalog, out_dir), catalog_path))
        for name, content in (extra_files or {}).items():
            staged.append((_stage_bytes(content, out_dir, name), out_dir / name))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    if interactions is None:
        interactions_path.unlink(missing_ok=True)

    return IngestReport(
        catalog_path=catalog_path,
        interactions_path=None if interactions is None else interactions_path,
        items=catalog.num_rows,
        interactions=0 if interactions is None else interactions.num_rows,
        users=n_users,
        dropped=dropped,
    )


def check_known_items(
    events: pa.Table,
    item_ids: pa.ChunkedArray,
    path: Path,
    column: str,
    *,
    drop_unknown: bool = False,
) -> tuple[pa.Table, int]:
    """Raise on the first interaction naming an unknown item, or drop all such rows."""
    known = pc.is_in(events["item_id"], value_set=item_ids.combine_chunks())
    unknown = pc.invert(known)
    n_unknown = pc.sum(unknown).as_py() or 0
    if n_unknown == 0:
        return events, 0
    if drop_unknown:
        return events.filter(known), n_unknown
    row = first_true(unknown)
    assert row is not None
    value = events["item_id"][row].as_py()
    raise IngestError(
        path,
        f"item {value!r} is not in the catalog ({n_unknown} such rows; "
        f"pass drop_unknown=True to drop them)",
        row=row + 1,
        column=column,
    )


# --------------------------------------------------------------------------- validation


def _conform(table: pa.Table, schema: pa.Schema, path: Path) -> pa.Table:
    """Select ``schema``'s columns in order, cast to its exact types or raise IngestError."""
    arrays = []
    for field in schema:
        col = decode_dictionary(require_column(table, path, field.name))
        if not _compatible(col.type, field.type):
            raise IngestError(path, f"expected {field.type}, found {col.type}", column=field.name)
        arrays.append(col.cast(field.type) if col.type != field.type else col)
    return pa.Table.from_arrays(arrays, schema=schema)


def _compatible(found: pa.DataType, wanted: pa.DataType) -> bool:
    def is_text(t: pa.DataType) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    if is_text(wanted):
        return is_text(found)
    if pa.types.is_list(wanted):
        return (pa.types.is_list(found) or pa.types.is_large_list(found)) and is_text(
            found.value_type
        )
    if pa.types.is_integer(wanted):
        return pa.types.is_integer(found)
    if pa.types.is_floating(wanted):
        return pa.types.is_floating(found)
    return found == wanted


def _validate_catalog(table: pa.Table, path: Path) -> None:
    if table.num_rows == 0:
        raise IngestError(path, "the catalog has no items")
    for name in ("item_id", "title", "text", "categories"):
        raise_at(table[name].is_null(), path, name, "null value")
    raise_at(pc.equal(table["item_id"], ""), path, "item_id", "empty id")
    flat = pc.list_flatten(table["categories"])
    if flat.null_count:
        raise IngestError(path, "null category", column="categories")
    check_unique(table["item_id"], path, "item_id")


def _validate_interactions(table: pa.Table, path: Path) -> None:
    for name in INTERACTIONS_SCHEMA.names:
        raise_at(table[name].is_null(), path, name, "null value")
    for name in ("user_id", "item_id"):
        raise_at(pc.equal(table[name], ""), path, name, "empty id")


# --------------------------------------------------------------------------- writing


def _stage_parquet(table: pa.Table, out_dir: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=out_dir, prefix=".ingest-", suffix=".parquet.tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        pq.write_table(table, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _stage_bytes(content: bytes, out_dir: Path, name: str) -> Path:
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=f".{name}-", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
