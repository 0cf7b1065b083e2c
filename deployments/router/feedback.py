"""User feedback (`POST /v1/feedback`): events that become part of a user's history.

Each accepted event is appended to `feedback.jsonl` in the dataset folder (one
JSON object per line, flushed and fsynced before the answer) and to the
router's in-memory history of that user, so the user's next request already
uses it. At start the router replays the file over the histories read from the
interaction log; a last line cut short by a crash is dropped with a warning
(`retrieval.integrity.complete_lines`), every other malformed line is an error
naming the file and line (`load_histories`). Without Ray.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import pyarrow.parquet as pq

from deployments.errors import Unavailable
from deployments.router.schemas import FeedbackEvent
from retrieval.config import AppConfig
from retrieval.integrity import append_durably, complete_lines
from retrieval.profiles import histories_from_log

__all__ = ["FEEDBACK_FILE", "FeedbackLog", "apply_event", "load_histories"]

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
        self.path = path
        self._lock = threading.Lock()

    def append(self, event: FeedbackEvent) -> None:
        """Write one event durably (blocking: call it from a worker thread).

        A failed write leaves the file as it was and raises `Unavailable` (503):
        the event was not recorded and may be sent again.
        """
        with self._lock:
            try:
                append_durably(self.path, (event.model_dump_json() + "\n").encode())
            except OSError as exc:
                raise Unavailable(f"could not record the event: {exc.strerror or exc}") from exc

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


def load_histories(config: AppConfig, feedback: FeedbackLog) -> dict[str, list[str]]:
    """Histories of the interaction log, then the feedback received since, in order."""
    path = config.data_path / "interactions.parquet"
    histories = {}
    if path.exists():
        log = pq.read_table(path, columns=["user_id", "item_id", "ts"])
        histories = histories_from_log(
            log["user_id"].to_pylist(), log["item_id"].to_pylist(), log["ts"].to_pylist()
        )
    for event in feedback.replay():
        apply_event(histories, event)
    return histories
