"""Turning a task spec into one HTTP request of the llmrec API v1."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from loadtest.scenario import TaskSpec
from loadtest.traffic import TrafficData

__all__ = ["PlannedRequest", "TaskPicker", "build_request"]


@dataclass(frozen=True)
class PlannedRequest:
    """One request to send: `name` is the task label used in every report."""

    name: str
    method: str
    path: str
    body: dict[str, Any]
    write: tuple[str, ...] = ()
    """What an acknowledged answer commits: ("item", id) or ("feedback", user, item, ts)."""

    @property
    def is_write(self) -> bool:
        return bool(self.write)


def build_request(
    task: TaskSpec, user: str, traffic: TrafficData, rng: random.Random, history_len: int
) -> PlannedRequest:
    """The request a simulated `user` makes for `task`, with ids and text from `traffic`."""
    if task.kind == "feedback":
        history = traffic.histories.get(user) or traffic.items
        body: dict[str, Any] = {
            "user_id": user,
            "item_id": rng.choice(history),
            "event": "click",
            "ts": int(time.time()),
        }
        write = ("feedback", user, body["item_id"], str(body["ts"]))
        return PlannedRequest(task.label, "POST", "/v1/feedback", body, write=write)
    if task.kind == "upsert":
        item_id = f"lt-{rng.getrandbits(64):016x}"
        text = rng.choice(traffic.queries)
        item = {"item_id": item_id, "title": f"Load test {item_id[3:11]}", "text": text}
        if traffic.categories:
            item["categories"] = [rng.choice(traffic.categories)]
        body = {"items": [item]}
        return PlannedRequest(task.label, "POST", "/v1/items", body, write=("item", item_id))
    body = {"k": task.k, "rerank": task.rerank, "explain": task.explain}
    if task.kind in ("user", "user_query"):
        body["user_id"] = user
    if task.kind == "history":
        body["history"] = traffic.history_of(user, rng, history_len)
    if task.kind in ("query", "user_query"):
        body["query"] = rng.choice(traffic.queries)
    if task.deadline_ms is not None:
        body["deadline_ms"] = task.deadline_ms
    if task.category_filter and traffic.categories and rng.random() < task.category_filter:
        body["filters"] = {"category": [rng.choice(traffic.categories)]}
    return PlannedRequest(task.label, "POST", "/v1/recommend", body)


class TaskPicker:
    """Weighted choice among tasks; a task can be switched off mid-run (e.g. unsupported)."""

    def __init__(self, tasks: list[TaskSpec]) -> None:
        self.tasks = [t for t in tasks if t.weight > 0]
        self.disabled: set[str] = set()

    def disable(self, label: str) -> None:
        self.disabled.add(label)

    def pick(self, rng: random.Random) -> TaskSpec | None:
        """A task by weight among the enabled ones; None when all are disabled."""
        live = [t for t in self.tasks if t.label not in self.disabled]
        if not live:
            return None
        return rng.choices(live, weights=[t.weight for t in live], k=1)[0]
