"""Names and types of an ingested dataset: its file names, schemas, error and report.

The layout these describe is documented in :mod:`retrieval.catalog`, the public entry point
that re-exports everything here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

__all__ = [
    "CATALOG_FILE",
    "CATALOG_SCHEMA",
    "INTERACTIONS_FILE",
    "INTERACTIONS_SCHEMA",
    "IngestError",
    "IngestReport",
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
