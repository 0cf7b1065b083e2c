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
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

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

CATALOG_FILE = "catalog.parquet"
INTERACTIONS_FILE = "interactions.parquet"

CATALOG_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("categories", pa.list_(pa.string())),
    ]
)
INTERACTIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("ts", pa.int64()),
        ("event", pa.string()),
        ("weight", pa.float32()),
    ]
)

Format = Literal["auto", "parquet", "csv", "jsonl"]

_SUFFIX_FORMATS: dict[str, Format] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".zst", ".lz4"}
_TS_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_MOVIELENS_NO_GENRES = "(no genres listed)"
_MOVIELENS_MAX_TAGS = 10


class IngestError(ValueError):
    """A file that cannot be ingested; names the file, the 1-based data row and the column.

    ``row`` is ``None`` when the problem is not tied to one row (a missing column, an
    unreadable file); ``column`` is ``None`` when it is not tied to one column.
    """

    def __init__(
        self,
        path: Path | str,
        message: str,
        *,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.row = row
        self.column = column
        self.detail = message
        where = [str(self.path)]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")


@dataclass
class IngestReport:
    """What an ingest wrote: file paths and counts (``dropped`` = rows naming unknown items)."""

    catalog_path: Path
    interactions_path: Path | None
    items: int
    interactions: int
    users: int
    dropped: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        data = asdict(self)
        data["catalog_path"] = str(self.catalog_path)
        data["interactions_path"] = (
            None if self.interactions_path is None else str(self.interactions_path)
        )
        return data


# --------------------------------------------------------------------------- public API


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
    raw_catalog = _read_table(catalog, fmt, string_cols=[id_col, title_col, text_col, category_col])
    items = _build_catalog(
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
        raw_events = _read_table(interactions, fmt, string_cols=[user_col, item_col, event_col])
        events = _build_interactions(
            raw_events,
            interactions,
            user_col=user_col,
            item_col=item_col,
            ts_col=ts_col,
            event_col=event_col,
            weight_col=weight_col,
        )
        events, dropped = _check_known_items(
            events, items["item_id"], interactions, item_col, drop_unknown=drop_unknown
        )
    return write_dataset(out_dir, items, events, dropped=dropped)


def ingest_movielens(
    src_dir: Path,
    out_dir: Path,
    *,
    min_rating: float = 0.0,
    drop_unknown: bool = False,
) -> IngestReport:
    """Ingest a MovieLens CSV release (``movies.csv``, ``ratings.csv``, optional ``tags.csv``).

    Item text reads like "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun.":
    genres split on "|" ("(no genres listed)" means none), then up to ten distinct lower-cased
    tags, most frequent first. Ratings below ``min_rating`` are left out; the rest become
    ``event="rating"`` with ``weight`` = the rating. Raises :class:`IngestError` as
    :func:`ingest_table` does; nothing is written then.
    """
    src_dir = Path(src_dir)
    movies_path = src_dir / "movies.csv"
    ratings_path = src_dir / "ratings.csv"
    tags_path = src_dir / "tags.csv"

    movies = _read_table(movies_path, "csv", string_cols=["movieId", "title", "genres"])
    for column in ("movieId", "title", "genres"):
        _column(movies, movies_path, column)
    movie_ids = _normalise_ids(movies["movieId"], movies_path, "movieId")
    _check_unique(movie_ids, movies_path, "movieId")
    tags_by_movie = _movielens_tags(tags_path) if tags_path.exists() else {}

    titles = _clean_strings(movies["title"])
    genres_col = movies["genres"].to_pylist()
    texts: list[str] = []
    categories: list[list[str]] = []
    for movie_id, title, genres in zip(
        movie_ids.to_pylist(), titles.to_pylist(), genres_col, strict=True
    ):
        genre_list = _split_categories(genres, "|")
        genre_list = [g for g in genre_list if g != _MOVIELENS_NO_GENRES]
        categories.append(genre_list)
        texts.append(_movielens_text(title, genre_list, tags_by_movie.get(movie_id, [])))
    items = pa.Table.from_arrays(
        [
            movie_ids,
            titles,
            pa.array(texts, pa.string()),
            pa.array(categories, pa.list_(pa.string())),
        ],
        schema=CATALOG_SCHEMA,
    )

    ratings = _read_table(ratings_path, "csv", string_cols=["userId", "movieId"])
    events = _build_interactions(
        ratings,
        ratings_path,
        user_col="userId",
        item_col="movieId",
        ts_col="timestamp",
        event_col=None,
        weight_col="rating",
        default_event="rating",
    )
    events, dropped = _check_known_items(
        events, items["item_id"], ratings_path, "movieId", drop_unknown=drop_unknown
    )
    if min_rating > 0:
        keep = pc.greater_equal(events["weight"], pa.scalar(min_rating, pa.float32()))
        events = events.filter(keep)
    return write_dataset(out_dir, items, events, dropped=dropped)


def read_catalog(path: Path) -> pa.Table:
    """Read a ``catalog.parquet`` written by ingest, in :data:`CATALOG_SCHEMA`.

    Extra columns are left out. Raises :class:`IngestError` if the file is unreadable, a column
    is missing or of the wrong type, an id is empty, or ids repeat.
    """
    path = Path(path)
    table = _read_table(path, "parquet")
    table = _conform(table, CATALOG_SCHEMA, path)
    _validate_catalog(table, path)
    return table


def read_interactions(path: Path) -> pa.Table:
    """Read an ``interactions.parquet`` written by ingest, in :data:`INTERACTIONS_SCHEMA`.

    Extra columns are left out. Raises :class:`IngestError` if the file is unreadable, a column
    is missing or of the wrong type, or a value is null or an id empty.
    """
    path = Path(path)
    table = _read_table(path, "parquet")
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
        _check_known_items(interactions, catalog["item_id"], interactions_path, "item_id")
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


# --------------------------------------------------------------------------- reading


def _detect_format(path: Path, fmt: Format) -> Format:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffixes[-1]]
    raise IngestError(
        path,
        f"cannot tell the format from the suffix; pass fmt as one of "
        f"parquet, csv, jsonl (known suffixes: {', '.join(sorted(_SUFFIX_FORMATS))})",
    )


def _read_table(path: Path, fmt: Format, *, string_cols: Iterable[str | None] = ()) -> pa.Table:
    """Read ``path``; CSV columns in ``string_cols`` are read as text (keeps "007" intact)."""
    kind = _detect_format(path, fmt)
    if not path.is_file():
        raise IngestError(path, "file not found")
    try:
        if kind == "parquet":
            return pq.read_table(path)
        if kind == "jsonl":
            return pa_json.read_json(path)
        return _read_csv(path, [c for c in string_cols if c])
    except IngestError:
        raise
    except (pa.ArrowException, OSError) as exc:
        hint = " (expected one JSON object per line)" if kind == "jsonl" else ""
        raise IngestError(path, f"cannot read as {kind}{hint}: {exc}") from exc


def _read_csv(path: Path, string_cols: list[str]) -> pa.Table:
    convert = pa_csv.ConvertOptions(column_types={c: pa.string() for c in string_cols})
    try:
        return pa_csv.read_csv(path, convert_options=convert)
    except pa.ArrowInvalid as exc:
        row = _first_bad_csv_row(path)
        raise IngestError(path, f"malformed CSV: {exc}", row=row) from exc


def _first_bad_csv_row(path: Path) -> int | None:
    """Re-parse single-threaded (slow path, errors only) to learn the bad row's number."""
    rows: list[int] = []

    def record(row: pa_csv.InvalidRow) -> str:
        if row.number is not None:
            rows.append(row.number - 1)  # the header is record 1
        return "error"

    options = pa_csv.ParseOptions(invalid_row_handler=record)
    with contextlib.suppress(pa.ArrowException, OSError):
        pa_csv.read_csv(
            path, read_options=pa_csv.ReadOptions(use_threads=False), parse_options=options
        )
    return rows[0] if rows else None


def _column(table: pa.Table, path: Path, name: str) -> pa.ChunkedArray:
    """The column ``name``; an IngestError listing the available columns if it is missing."""
    indices = table.schema.get_all_field_indices(name)
    if not indices:
        available = ", ".join(repr(n) for n in table.column_names) or "none"
        raise IngestError(path, f"missing column (available: {available})", column=name)
    if len(indices) > 1:
        raise IngestError(path, "column appears more than once", column=name)
    return table.column(indices[0])


# --------------------------------------------------------------------------- building tables


def _build_catalog(
    raw: pa.Table,
    path: Path,
    *,
    id_col: str,
    title_col: str,
    text_col: str | None,
    category_col: str | None,
    category_sep: str,
) -> pa.Table:
    ids = _normalise_ids(_column(raw, path, id_col), path, id_col)
    titles = _clean_strings(_as_text(_column(raw, path, title_col), path, title_col))
    if text_col is not None and text_col in raw.column_names:
        texts = _clean_strings(_as_text(_column(raw, path, text_col), path, text_col))
        texts = pc.if_else(pc.equal(texts, ""), titles, texts)
    else:
        texts = titles
    if category_col is not None and category_col in raw.column_names:
        column = _column(raw, path, category_col)
        categories = _categories(column, path, category_col, category_sep)
    else:
        categories = pa.array([[]] * raw.num_rows, pa.list_(pa.string()))
    _check_unique(ids, path, id_col)
    return pa.Table.from_arrays([ids, titles, texts, categories], schema=CATALOG_SCHEMA)


def _build_interactions(
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
    users = _normalise_ids(_column(raw, path, user_col), path, user_col)
    items = _normalise_ids(_column(raw, path, item_col), path, item_col)
    ts = _to_unix_seconds(_column(raw, path, ts_col), path, ts_col)
    n = raw.num_rows
    if event_col is not None:
        events = _clean_strings(_as_text(_column(raw, path, event_col), path, event_col))
        _raise_at(pc.equal(events, ""), path, event_col, "empty event")
    else:
        events = pa.array([default_event] * n, pa.string())
    if weight_col is not None:
        weights = _to_float32(_column(raw, path, weight_col), path, weight_col)
    else:
        weights = pa.array(np.ones(n, dtype=np.float32))
    return pa.Table.from_arrays([users, items, ts, events, weights], schema=INTERACTIONS_SCHEMA)


def _check_known_items(
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
    row = _first_true(unknown)
    assert row is not None
    value = events["item_id"][row].as_py()
    raise IngestError(
        path,
        f"item {value!r} is not in the catalog ({n_unknown} such rows; "
        f"pass drop_unknown=True to drop them)",
        row=row + 1,
        column=column,
    )


# --------------------------------------------------------------------------- normalisation


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int | None:
    values = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)
    hits = np.flatnonzero(values)
    return int(hits[0]) if hits.size else None


def _raise_at(mask: pa.ChunkedArray | pa.Array, path: Path, column: str, message: str) -> None:
    row = _first_true(mask)
    if row is not None:
        raise IngestError(path, message, row=row + 1, column=column)


def _decode(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    return col


def _normalise_ids(col: pa.ChunkedArray, path: Path, column: str) -> pa.ChunkedArray:
    """Ids as stripped strings: integers and integral floats become "42"; empty/null raise."""
    col = _decode(col)
    _raise_at(col.is_null(), path, column, "missing id")
    kind = col.type
    if pa.types.is_integer(kind):
        out = col.cast(pa.string())
    elif pa.types.is_floating(kind):
        _raise_at(pc.is_nan(col), path, column, "missing id (NaN)")
        _raise_at(pc.not_equal(pc.floor(col), col), path, column, "id is a non-integral number")
        out = col.cast(pa.int64()).cast(pa.string())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        out = pc.utf8_trim_whitespace(col).cast(pa.string())
    else:
        raise IngestError(path, f"ids must be strings or integers, not {kind}", column=column)
    _raise_at(pc.equal(out, ""), path, column, "empty id")
    return out


def _check_unique(ids: pa.ChunkedArray, path: Path, column: str) -> None:
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


def _as_text(col: pa.ChunkedArray, path: Path, column: str) -> pa.ChunkedArray:
    col = _decode(col)
    kind = col.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return col.cast(pa.string())
    if pa.types.is_null(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return col.cast(pa.string())
    raise IngestError(path, f"expected text, not {kind}", column=column)


def _clean_strings(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.utf8_trim_whitespace(col), "")


def _split_categories(value: Any, sep: str) -> list[str]:
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
    col = _decode(col)
    kind = col.type
    is_list = (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )
    is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if not (is_list or is_text or pa.types.is_null(kind)):
        raise IngestError(path, f"categories must be text or a list, not {kind}", column=column)
    values = [_split_categories(v, sep) for v in col.to_pylist()]
    return pa.array(values, pa.list_(pa.string()))


def _to_unix_seconds(col: pa.ChunkedArray, path: Path, column: str) -> pa.ChunkedArray:
    """Integer unix seconds from ints, integral floats, integer strings, timestamps or dates."""
    col = _decode(col)
    _raise_at(col.is_null(), path, column, "missing timestamp")
    kind = col.type
    if pa.types.is_integer(kind):
        return col.cast(pa.int64())
    if pa.types.is_floating(kind):
        _raise_at(pc.is_nan(col), path, column, "missing timestamp (NaN)")
        _raise_at(
            pc.not_equal(pc.floor(col), col),
            path,
            column,
            "timestamp must be whole unix seconds",
        )
        return col.cast(pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        trimmed = pc.utf8_trim_whitespace(col)
        bad = pc.invert(pc.match_substring_regex(trimmed, r"^[+-]?[0-9]{1,18}$"))
        row = _first_true(bad)
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
    col = _decode(col)
    _raise_at(col.is_null(), path, column, "missing weight")
    kind = col.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        trimmed = pc.utf8_trim_whitespace(col)
        number = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
        bad = pc.invert(pc.match_substring_regex(trimmed, number))
        row = _first_true(bad)
        if row is not None:
            raise IngestError(
                path, f"weight {col[row].as_py()!r} is not a number", row=row + 1, column=column
            )
        col = trimmed
    elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise IngestError(path, f"weight must be a number, not {kind}", column=column)
    out = col.cast(pa.float64()).cast(pa.float32(), safe=False)
    _raise_at(pc.invert(pc.is_finite(out)), path, column, "weight is not a finite number")
    return out


# --------------------------------------------------------------------------- validation


def _conform(table: pa.Table, schema: pa.Schema, path: Path) -> pa.Table:
    """Select ``schema``'s columns in order, cast to its exact types or raise IngestError."""
    arrays = []
    for field in schema:
        col = _decode(_column(table, path, field.name))
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
        _raise_at(table[name].is_null(), path, name, "null value")
    _raise_at(pc.equal(table["item_id"], ""), path, "item_id", "empty id")
    flat = pc.list_flatten(table["categories"])
    if flat.null_count:
        raise IngestError(path, "null category", column="categories")
    _check_unique(table["item_id"], path, "item_id")


def _validate_interactions(table: pa.Table, path: Path) -> None:
    for name in INTERACTIONS_SCHEMA.names:
        _raise_at(table[name].is_null(), path, name, "null value")
    for name in ("user_id", "item_id"):
        _raise_at(pc.equal(table[name], ""), path, name, "empty id")


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


# --------------------------------------------------------------------------- MovieLens


def _movielens_tags(path: Path) -> dict[str, list[str]]:
    """Per movie id: distinct lower-cased tags, most frequent first (ties alphabetical)."""
    tags = _read_table(path, "csv", string_cols=["movieId", "tag", "userId"])
    movie_ids = _normalise_ids(_column(tags, path, "movieId"), path, "movieId")
    words = pc.utf8_lower(_clean_strings(_as_text(_column(tags, path, "tag"), path, "tag")))
    counts: dict[str, Counter[str]] = {}
    for movie_id, word in zip(movie_ids.to_pylist(), words.to_pylist(), strict=True):
        if word:
            counts.setdefault(movie_id, Counter())[word] += 1
    return {
        movie_id: [w for w, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))][
            :_MOVIELENS_MAX_TAGS
        ]
        for movie_id, c in counts.items()
    }


def _movielens_text(title: str, genres: list[str], tags: list[str]) -> str:
    parts = [title.rstrip(".")] if title else []
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    return ". ".join(parts) + "." if parts else ""
