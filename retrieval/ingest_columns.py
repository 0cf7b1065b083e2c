"""Turning raw input columns into the dataset's normalised columns and tables.

Ids become stripped strings, timestamps integer unix seconds, weights finite float32 and
categories clean string lists; a value that cannot be converted raises
:class:`~retrieval.catalog_types.IngestError` naming the file, the 1-based row and the column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrieval.catalog_types import CATALOG_SCHEMA, INTERACTIONS_SCHEMA, IngestError

__all__ = [
    "as_text",
    "build_catalog",
    "build_interactions",
    "check_unique",
    "clean_strings",
    "decode_dictionary",
    "first_true",
    "normalise_ids",
    "raise_at",
    "require_column",
    "split_categories",
]

_TS_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def require_column(table: pa.Table, path: Path, name: str) -> pa.ChunkedArray:
    """The column ``name``; an IngestError listing the available columns if it is missing."""
    indices = table.schema.get_all_field_indices(name)
    if not indices:
        available = ", ".join(repr(n) for n in table.column_names) or "none"
        raise IngestError(path, f"missing column (available: {available})", column=name)
    if len(indices) > 1:
        raise IngestError(path, "column appears more than once", column=name)
    return table.column(indices[0])


# --------------------------------------------------------------------------- building tables


def build_catalog(
    raw: pa.Table,
    path: Path,
    *,
    id_col: str,
    title_col: str,
    text_col: str | None,
    category_col: str | None,
    category_sep: str,
) -> pa.Table:
    """A :data:`CATALOG_SCHEMA` table from the raw catalog columns named by the ``*_col`` arguments.

    A missing or blank text falls back to the title; without ``category_col`` categories are
    empty. Raises :class:`IngestError` for a missing column, a bad value or a repeated id.
    """
    ids = normalise_ids(require_column(raw, path, id_col), path, id_col)
    titles = clean_strings(as_text(require_column(raw, path, title_col), path, title_col))
    if text_col is not None and text_col in raw.column_names:
        texts = clean_strings(as_text(require_column(raw, path, text_col), path, text_col))
        texts = pc.if_else(pc.equal(texts, ""), titles, texts)
    else:
        texts = titles
    if category_col is not None and category_col in raw.column_names:
        column = require_column(raw, path, category_col)
        categories = _categories(column, path, category_col, category_sep)
    else:
        categories = pa.array([[]] * raw.num_rows, pa.list_(pa.string()))
    check_unique(ids, path, id_col)
    return pa.Table.from_arrays([ids, titles, texts, categories], schema=CATALOG_SCHEMA)


def build_interactions(
    raw: pa.Table,
    path: Path,
    *,
    user_col: str,
    item_col: str,
    ts_col: str,
    event_col: str | None,
    weight_col: str | None,
    default_event: str = "interact",
) -> pa.Table:
    """An :data:`INTERACTIONS_SCHEMA` table from the raw log columns named by the ``*_col`` args.

    Without ``event_col`` every event is ``default_event``; without ``weight_col`` every weight
    is 1.0. Rows keep their input order. Raises :class:`IngestError` for a missing column or a
    bad value.
    """
    users = normalise_ids(require_column(raw, path, user_col), path, user_col)
    items = normalise_ids(require_column(raw, path, item_col), path, item_col)
    ts = _to_unix_seconds(require_column(raw, path, ts_col), path, ts_col)
    n = raw.num_rows
    if event_col is not None:
        events = clean_strings(as_text(require_column(raw, path, event_col), path, event_col))
        raise_at(pc.equal(events, ""), path, event_col, "empty event")
    else:
        events = pa.array([default_event] * n, pa.string())
    if weight_col is not None:
        weights = _to_float32(require_column(raw, path, weight_col), path, weight_col)
    else:
        weights = pa.array(np.ones(n, dtype=np.float32))
    return pa.Table.from_arrays([users, items, ts, events, weights], schema=INTERACTIONS_SCHEMA)


# --------------------------------------------------------------------------- normalisation


def first_true(mask: pa.ChunkedArray | pa.Array) -> int | None:
    """0-based position of the first true value of ``mask`` (nulls count as false), or None."""
    values = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)
    hits = np.flatnonzero(values)
    return int(hits[0]) if hits.size else None


def raise_at(mask: pa.ChunkedArray | pa.Array, path: Path, column: str, message: str) -> None:
    """Raise :class:`IngestError` with ``message`` at the first row where ``mask`` is true."""
    row = first_true(mask)
    if row is not None:
        raise IngestError(path, message, row=row + 1, column=column)


def decode_dictionary(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary-encoded column as plain values of its value type; other columns as they are."""
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    return col


def normalise_ids(col: pa.ChunkedArray, path: Path, column: str) -> pa.ChunkedArray:
    """Ids as stripped strings: integers and integral floats become "42"; empty/null raise."""
    col = decode_dictionary(col)
    raise_at(col.is_null(), path, column, "missing id")
    kind = col.type
    if pa.types.is_integer(kind):
        out = col.cast(pa.string())
    elif pa.types.is_floating(kind):
        raise_at(pc.is_nan(col), path, column, "missing id (NaN)")
        raise_at(pc.not_equal(pc.floor(col), col), path, column, "id is a non-integral number")
        out = col.cast(pa.int64()).cast(pa.string())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        out = pc.utf8_trim_whitespace(col).cast(pa.string())
    else:
        raise IngestError(path, f"ids must be strings or integers, not {kind}", column=column)
    raise_at(pc.equal(out, ""), path, column, "empty id")
    return out


def check_unique(ids: pa.ChunkedArray, path: Path, column: str) -> None:
    """Raise naming the row of the first repeated id."""
    codes = pc.dictionary_encode(ids).combine_chunks().indices.to_numpy(zero_copy_only=False)
    uniques, first = np.unique(codes, return_index=True)
    if first.size == codes.size:
        return
    repeated = np.ones(codes.size, dtype=bool)
    repeated[first] = False
    row = int(np.flatnonzero(repeated)[0])
    original = int(first[np.searchsorted(uniques, codes[row])]) + 1
    value = ids[row].as_py()
    raise IngestError(
        path, f"duplicate id {value!r} (first seen in row {original})", row=row + 1, column=column
    )


def as_text(col: pa.ChunkedArray, path: Path, column: str) -> pa.ChunkedArray:
    """Text, integer, float or all-null values as strings; any other type raises IngestError."""
    col = decode_dictionary(col)
    kind = col.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return col.cast(pa.string())
    if pa.types.is_null(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return col.cast(pa.string())
    raise IngestError(path, f"expected text, not {kind}", column=column)


def clean_strings(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Strings with surrounding whitespace stripped and nulls as empty strings."""
    return pc.fill_null(pc.utf8_trim_whitespace(col), "")


def split_categories(value: Any, sep: str) -> list[str]:
    """One cell as a clean category list: split strings, keep list order, drop blanks/repeats."""
    if value is None:
        return []
    parts = value.split(sep) if isinstance(value, str) else [str(v) for v in value if v is not None]
    seen: dict[str, None] = {}
    for part in parts:
        part = part.strip()
        if part:
            seen.setdefault(part, None)
    return list(seen)


def _categories(col: pa.ChunkedArray, path: Path, column: str, sep: str) -> pa.Array:
    col = decode_dictionary(col)
    kind = col.type
    is_list = (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )
    is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if not (is_list or is_text or pa.types.is_null(kind)):
        raise IngestError(path, f"categories must be text or a list, not {kind}", column=column)
    values = [split_categories(v, sep) for v in col.to_pylist()]
    return pa.array(values, pa.list_(pa.string()))


def _to_unix_seconds(col: pa.ChunkedArray, path: Path, column: str) -> pa.ChunkedArray:
    """Integer unix seconds from ints, integral floats, integer strings, timestamps or dates."""
    col = decode_dictionary(col)
    raise_at(col.is_null(), path, column, "missing timestamp")
    kind = col.type
    if pa.types.is_integer(kind):
        return col.cast(pa.int64())
    if pa.types.is_floating(kind):
        raise_at(pc.is_nan(col), path, column, "missing timestamp (NaN)")
        raise_at(
            pc.not_equal(pc.floor(col), col),
            path,
            column,
            "timestamp must be whole unix seconds",
        )
        return col.cast(pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        trimmed = pc.utf8_trim_whitespace(col)
        bad = pc.invert(pc.match_substring_regex(trimmed, r"^[+-]?[0-9]{1,18}$"))
        row = first_true(bad)
        if row is not None:
            raise IngestError(
                path,
                f"timestamp {col[row].as_py()!r} is not integer unix seconds",
                row=row + 1,
                column=column,
            )
        return trimmed.cast(pa.int64())
    if pa.types.is_timestamp(kind):
        per_second = _TS_UNITS_PER_SECOND[kind.unit]
        raw = col.cast(pa.int64())
        return pc.divide(raw, per_second) if per_second > 1 else raw
    if pa.types.is_date(kind):
        days = col.cast(pa.date32()).cast(pa.int32()).cast(pa.int64())
        return pc.multiply(days, 86_400)
    raise IngestError(path, f"timestamp must be integer unix seconds, not {kind}", column=column)


def _to_float32(col: pa.ChunkedArray, path: Path, column: str) -> pa.ChunkedArray:
    col = decode_dictionary(col)
    raise_at(col.is_null(), path, column, "missing weight")
    kind = col.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        trimmed = pc.utf8_trim_whitespace(col)
        number = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
        bad = pc.invert(pc.match_substring_regex(trimmed, number))
        row = first_true(bad)
        if row is not None:
            raise IngestError(
                path, f"weight {col[row].as_py()!r} is not a number", row=row + 1, column=column
            )
        col = trimmed
    elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise IngestError(path, f"weight must be a number, not {kind}", column=column)
    out = col.cast(pa.float64()).cast(pa.float32(), safe=False)
    raise_at(pc.invert(pc.is_finite(out)), path, column, "weight is not a finite number")
    return out
