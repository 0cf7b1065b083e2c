"""Reading an input file into an Arrow table: Parquet, CSV or JSON lines, picked by suffix.

Every failure is an :class:`~retrieval.catalog_types.IngestError` naming the file and, for
malformed CSV, the 1-based data row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from retrieval.catalog_types import IngestError

__all__ = ["Format", "read_table"]

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


def read_table(path: Path, fmt: Format, *, string_cols: Iterable[str | None] = ()) -> pa.Table:
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
