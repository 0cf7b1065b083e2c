"""User feedback (`POST /v1/feedback`): events that become part of a user's history.

Each accepted event is appended to `feedback.jsonl` in the dataset folder (one
JSON object per line, flushed and fsynced before the answer) and to the
router's in-memory history of that user, so the user's next request already
uses it. At start the router replays the file over the histories read from the
interaction log; a last line cut short by a crash is dropped with a warning
(`retrieval.integrity.complete_lines`), every other malformed line is an error
naming the file and line (`load_histories`).

`erase_user` (`DELETE /v1/users/{user_id}`) removes a user's events from the
file and their rows from `interactions.parquet`, each rewritten atomically.
Appends and erasures take the same file lock, so router replicas on one node
never lose an event to an erasure. Without Ray.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from deployments.errors import Unavailable
from deployments.router.schemas import FeedbackEvent
from retrieval.config import AppConfig
from retrieval.integrity import (
    append_durably,
    complete_lines,
    file_lock,
    fsync_dir,
    replace_atomically,
)
from retrieval.profiles import histories_from_log

__all__ = [
    "FEEDBACK_FILE",
    "FeedbackLog",
    "apply_event",
    "erase_user",
    "load_histories",
    "log_histories",
]

FEEDBACK_FILE = "feedback.jsonl"


def apply_event(histories: MutableMapping[str, list[str]], event: FeedbackEvent) -> None:
    """Add `event`'s item as the user's newest interaction (moved there if already seen)."""
    history = histories.setdefault(event.user_id, [])
    if event.item_id in history:
        history.remove(event.item_id)
    history.append(event.item_id)


class FeedbackLog:
    """The append-only feedback file of one dataset folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._lock_file = self.path.with_name(f".{self.path.name}.lock")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """No append or erasure of this log, in this process or another, while held."""
        with self._lock, file_lock(self._lock_file):
            yield

    def append(self, event: FeedbackEvent) -> None:
        """Write one event durably (blocking: call it from a worker thread).

        A failed write leaves the file as it was and raises `Unavailable` (503):
        the event was not recorded and may be sent again.
        """
        with self.locked():
            try:
                append_durably(self.path, (event.model_dump_json() + "\n").encode())
            except OSError as exc:
                raise Unavailable(f"could not record the event: {exc.strerror or exc}") from exc

    def erase_locked(self, user_id: str) -> int:
        """Rewrite the log without `user_id`'s events (atomically); how many were removed.

        The caller holds `locked()`. A line that is not an event is an error, as in `replay`.
        """
        lines = complete_lines(self.path)
        kept = [line for n, line in enumerate(lines, 1) if self._user_of(line, n) != user_id]
        removed = len(lines) - len(kept)
        if removed:
            data = b"".join(line + b"\n" for line in kept)
            replace_atomically(self.path, lambda tmp: Path(tmp).write_bytes(data))
            fsync_dir(self.path.parent)
        return removed

    def _user_of(self, line: bytes, number: int) -> str | None:
        if not line.strip():
            return None
        try:
            return json.loads(line)["user_id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path}, line {number}: not a feedback event: {exc}") from exc

    def recorded(self) -> set[tuple[str, str, str]]:
        """(user, item, ts as text) of every event in the file: what a sender can look for."""
        return {(e.user_id, e.item_id, str(e.ts)) for e in self.replay()}

    def replay(self) -> Iterator[FeedbackEvent]:
        """Every event in the file, oldest first (nothing when there is no file)."""
        for number, line in enumerate(complete_lines(self.path), 1):
            if not line.strip():
                continue
            try:
                yield FeedbackEvent.model_validate_json(line)
            except ValueError as exc:
                message = f"{self.path}, line {number}: not a feedback event: {exc}"
                raise ValueError(message) from exc


def log_histories(config: AppConfig) -> dict[str, list[str]]:
    """Histories of the interaction log alone, oldest first ({} without a log)."""
    path = config.data_path / "interactions.parquet"
    if not path.exists():
        return {}
    log = pq.read_table(path, columns=["user_id", "item_id", "ts"])
    return histories_from_log(
        log["user_id"].to_pylist(), log["item_id"].to_pylist(), log["ts"].to_pylist()
    )


def load_histories(config: AppConfig, feedback: FeedbackLog) -> dict[str, list[str]]:
    """Histories of the interaction log, then the feedback received since, in order."""
    histories = log_histories(config)
    for event in feedback.replay():
        apply_event(histories, event)
    return histories


def erase_user(config: AppConfig, feedback: FeedbackLog, user_id: str) -> dict[str, int]:
    """Remove every record of `user_id` from the dataset folder, durably.

    The user's events leave `feedback.jsonl` and their rows leave
    `interactions.parquet`, each file rewritten beside itself and renamed over
    it (a crash leaves the old file or the new one, never a mix), under the
    feedback log's lock so no event appended meanwhile is lost. Returns how
    many of each were removed (blocking: call it from a worker thread). The
    models fit on the log (item-kNN, ALS, EASE) keep what they learnt from the
    user until the next `llmrec build`.
    """
    path = config.data_path / "interactions.parquet"
    with feedback.locked():
        events = feedback.erase_locked(user_id)
        rows = 0
        if path.exists():
            log = pq.read_table(path)
            keep = pc.fill_null(pc.not_equal(log["user_id"], user_id), True)
            kept = log.filter(keep)
            rows = len(log) - len(kept)
            if rows:
                replace_atomically(path, lambda tmp: pq.write_table(kept, tmp))
                fsync_dir(path.parent)
    return {"feedback_events": events, "interactions": rows}
