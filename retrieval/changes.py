"""The per-shard change log: upserts and deletes since the last snapshot, replayed at load.

`shard-NNN.changes.jsonl` holds one JSON object per line:

    {"seq": 7, "op": "upsert", "item": {"item_id", "title", "text", "categories"},
     "vector": "<base64 of float32 little-endian>", "crc": "<crc32 hex>"}
    {"seq": 8, "op": "delete", "item_id": "42", "crc": "…"}

`seq` grows by one per change across the life of the shard; the manifest
records the last `seq` folded into the shard's snapshot, so replay applies only
later lines. Every line carries a CRC32 of its other fields. Appends are
fsynced before the change is acknowledged; a final line without its newline is
a write that was never acknowledged (the process died mid-append) and is cut
off at replay. Any other damage refuses the log, naming the file and line.
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from retrieval.integrity import (
    IndexIntegrityError,
    append_durably,
    complete_lines,
    write_atomic,
)

__all__ = ["CHANGES_SUFFIX", "Change", "ChangeLog", "Item"]

log = logging.getLogger(__name__)

CHANGES_SUFFIX = ".changes.jsonl"
"""How a shard's change log is named: `shard-NNN` and this."""


@dataclass(frozen=True)
class Item:
    """A catalog row as the API and the shards carry it."""

    item_id: str
    title: str
    text: str = ""
    categories: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Change:
    """One logged change: an upsert carries the item and its vector, a delete only the id."""

    seq: int
    op: Literal["upsert", "delete"]
    item_id: str
    item: Item | None = None
    vector: np.ndarray | None = None


def _crc(record: dict) -> str:
    payload = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return f"{zlib.crc32(payload):08x}"


def _encode(change: Change) -> str:
    record: dict = {"seq": change.seq, "op": change.op}
    if change.op == "upsert":
        assert change.item is not None and change.vector is not None
        record["item"] = asdict(change.item)
        vec = np.ascontiguousarray(change.vector, dtype="<f4")
        record["vector"] = base64.b64encode(vec.tobytes()).decode()
    else:
        record["item_id"] = change.item_id
    record["crc"] = _crc(record)
    return json.dumps(record, separators=(",", ":")) + "\n"


class ChangeLog:
    """Append-only log of one shard's changes (see the module docstring for the format)."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim

    def append(self, changes: Sequence[Change]) -> None:
        """Write `changes` and fsync; when this returns they survive a crash."""
        if not changes:
            return
        append_durably(self.path, "".join(_encode(c) for c in changes).encode())

    def replay(self, after_seq: int) -> list[Change]:
        """Changes with `seq > after_seq`, in order, after checking every line.

        Cuts off an unterminated final line (an unacknowledged write). Raises
        IndexIntegrityError naming the file and line for a bad CRC, bad JSON, a
        vector of the wrong dimension or a sequence that does not grow by one.
        """
        changes: list[Change] = []
        prev: int | None = None
        for n, line in enumerate(complete_lines(self.path), 1):
            change = self._decode(line, n)
            if prev is not None and change.seq != prev + 1:
                raise IndexIntegrityError(
                    f"{self.path}:{n}: seq {change.seq} follows {prev}; the log is out of order"
                )
            prev = change.seq
            if change.seq > after_seq:
                changes.append(change)
        if changes and changes[0].seq != after_seq + 1:
            raise IndexIntegrityError(
                f"{self.path}: changes {after_seq + 1}..{changes[0].seq - 1} are missing "
                f"(snapshot holds up to {after_seq}, log starts at {changes[0].seq})"
            )
        return changes

    def _decode(self, line: bytes, n: int) -> Change:
        where = f"{self.path}:{n}"
        try:
            record = json.loads(line)
            crc = record.pop("crc")
            if crc != _crc(record):
                raise IndexIntegrityError(f"{where}: crc {crc} does not match the line's content")
            seq, op = int(record["seq"]), record["op"]
            if op == "delete":
                return Change(seq=seq, op="delete", item_id=str(record["item_id"]))
            if op != "upsert":
                raise IndexIntegrityError(f"{where}: unknown op {op!r}")
            item = Item(**record["item"])
            vector = np.frombuffer(base64.b64decode(record["vector"]), dtype="<f4")
        except IndexIntegrityError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexIntegrityError(f"{where}: malformed change ({exc})") from exc
        if vector.shape != (self.dim,):
            raise IndexIntegrityError(
                f"{where}: vector of dim {vector.size}, the shard has dim {self.dim}"
            )
        return Change(
            seq=seq, op="upsert", item_id=item.item_id, item=item, vector=vector.astype(np.float32)
        )

    def reset(self) -> None:
        """Empty the log atomically (after a snapshot took in every change)."""
        if self.path.exists():
            write_atomic(self.path, b"")
