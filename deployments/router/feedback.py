"""User feedback (`POST /v1/feedback`): events that become part of a user's history.

Each accepted event is appended to `feedback.jsonl` in the dataset folder (one
JSON object per line, flushed and fsynced before the answer) and to the
router's in-memory history of that user, so the user's next request already
uses it. At start the router replays the file over the histories read from the
interaction log; a last line cut short by a crash is skipped with a warning,
every other malformed line is an error naming the file and line. Without Ray.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from deployments.router.schemas import FeedbackEvent

__all__ = ["FEEDBACK_FILE", "FeedbackLog", "apply_event"]

FEEDBACK_FILE = "feedback.jsonl"

log = logging.getLogger(__name__)


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
        """Write one event durably (blocking: call it from a worker thread)."""
        line = event.model_dump_json() + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def replay(self) -> Iterator[FeedbackEvent]:
        """Every event in the file, oldest first (nothing when there is no file)."""
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").split("\n")
        complete = lines[:-1]  # the text after the last newline is an unfinished write
        if lines[-1]:
            log.warning("%s: skipping an unfinished last line: %.80r", self.path, lines[-1])
        for number, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                yield FeedbackEvent.model_validate(json.loads(line))
            except ValueError as exc:
                message = f"{self.path}, line {number}: not a feedback event: {exc}"
                raise ValueError(message) from exc
