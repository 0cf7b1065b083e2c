"""Where the router keeps user histories and feedback: this replica's memory, or Redis.

`router.user_store` picks one:

- `local` (default, one node): every router replica reads the interaction log
  at start and replays `feedback.jsonl` over it (`LocalStore`); an event is
  fsynced to that file before the answer and joins the history of the replica
  that took it. Other replicas see it when they restart. Nothing to run
  beside the app, and the file is the durable record.
- `redis` (several replicas or nodes): histories live in one Redis server
  (`RedisStore`), a capped list per user. Every replica reads the user's list
  per request, so an event acknowledged by one replica is in the next request
  of every other. Durability is the server's: run it with `appendonly yes`
  and `appendfsync always`, so an acknowledged event survives a killed
  server. The interaction log is loaded once per log file (the first replica
  to start takes a lock and loads; the others wait for its marker), merged
  with what the users did since.

Both keep at most `router.history_cap` items per user (oldest dropped), the
order the router uses: oldest first, an item done again moved to the end. An
event that names an `event_id` already recorded within `router.event_id_ttl_s`
is a retry: answered as before, recorded once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Protocol

from deployments.errors import Unavailable
from deployments.router.feedback import (
    FEEDBACK_FILE,
    FeedbackLog,
    apply_event,
    erase_user,
    log_histories,
)
from deployments.router.schemas import FeedbackEvent
from retrieval.config import AppConfig

__all__ = ["LocalStore", "MemoryStore", "RedisStore", "UserStore", "open_store"]

log = logging.getLogger(__name__)


class UserStore(Protocol):
    """User histories and the feedback that extends them."""

    async def history(self, user_id: str) -> list[str]:
        """The user's items, oldest first (at most `history_cap`); [] for an unknown user."""
        ...

    async def record(self, event: FeedbackEvent) -> bool:
        """Make `event` the user's newest interaction, durably; False when its `event_id`
        was recorded already (a retry), and nothing changes."""
        ...

    async def erase(self, user_id: str) -> dict[str, int]:
        """Forget the user; what was removed, by kind."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """Histories in a dict (tests, and `llmrec eval`'s in-process router): nothing durable."""

    def __init__(self, histories: MutableMapping[str, list[str]] | None = None, cap: int = 0):
        self.histories = histories if histories is not None else {}
        self.cap = cap
        self._event_ids: OrderedDict[str, float] = OrderedDict()
        self.event_id_ttl_s = 86_400.0

    async def history(self, user_id: str) -> list[str]:
        return self.histories.get(user_id, [])

    def seen_event(self, event: FeedbackEvent) -> bool:
        """True for an `event_id` recorded within the TTL; remembers a new one."""
        if event.event_id is None:
            return False
        now = time.monotonic()
        while self._event_ids and next(iter(self._event_ids.values())) < now:
            self._event_ids.popitem(last=False)  # expired: the oldest go first
        if self._event_ids.get(event.event_id, now) > now:
            return True
        self._event_ids.pop(event.event_id, None)  # expired or new: remembered from now on
        self._event_ids[event.event_id] = now + self.event_id_ttl_s
        return False

    def apply(self, event: FeedbackEvent) -> None:
        apply_event(self.histories, event)
        history = self.histories[event.user_id]
        if self.cap and len(history) > self.cap:
            del history[: len(history) - self.cap]

    async def record(self, event: FeedbackEvent) -> bool:
        if self.seen_event(event):
            return False
        self.apply(event)
        return True

    async def erase(self, user_id: str) -> dict[str, int]:
        return {"history_items": len(self.histories.pop(user_id, []))}

    def close(self) -> None:
        pass


class LocalStore(MemoryStore):
    """This replica's memory over the interaction log and `feedback.jsonl` (one node)."""

    def __init__(self, config: AppConfig, feedback: FeedbackLog) -> None:
        rc = config.router
        super().__init__(log_histories(config), cap=rc.history_cap)
        for user, history in self.histories.items():
            if len(history) > self.cap:
                self.histories[user] = history[-self.cap :]
        self.event_id_ttl_s = rc.event_id_ttl_s
        # One pass over the file: its events join the histories in order, and their ids are
        # remembered, so retries of events sent before a restart stay retries.
        for event in feedback.replay():
            self.seen_event(event)
            self.apply(event)
        self.config = config
        self.feedback = feedback
        self._writes = asyncio.Lock()

    async def record(self, event: FeedbackEvent) -> bool:
        async with self._writes:  # the id check and the append as one step
            if self.seen_event(event):
                return False
            try:
                await asyncio.to_thread(self.feedback.append, event)
            except Unavailable:
                self._event_ids.pop(event.event_id or "", None)  # not recorded: may come again
                raise
            self.apply(event)
            return True

    async def erase(self, user_id: str) -> dict[str, int]:
        removed = await asyncio.to_thread(erase_user, self.config, self.feedback, user_id)
        return {**removed, **await super().erase(user_id)}


# Make the item the user's newest (moved if there), keep the last `cap`, and append the
# event to the stream `llmrec build --incremental` folds into the log; with an event id, only
# once per id within the TTL. Atomic in the server, so replicas never interleave.
_RECORD = """
if KEYS[2] ~= '' and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return 0
end
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('XADD', KEYS[3], '*', 'event', ARGV[4])
return 1
"""


class RedisStore:
    """Histories in one Redis server, shared by every router replica (see the module doc)."""

    def __init__(self, config: AppConfig, feedback: FeedbackLog | None = None) -> None:
        import redis
        import redis.asyncio

        rc = config.router
        # Erasures rewrite the dataset's files under this log's lock, as with `local`.
        self.feedback = feedback or FeedbackLog(config.data_path / FEEDBACK_FILE)
        self.prefix = rc.redis_prefix
        self.cap = rc.history_cap
        self.event_id_ttl_s = rc.event_id_ttl_s
        self.config = config
        self._url = rc.redis_url
        self._errors = (redis.RedisError, OSError)
        self.client = redis.asyncio.Redis.from_url(
            rc.redis_url, decode_responses=True, socket_timeout=rc.backend_timeout_s
        )
        self._record = self.client.register_script(_RECORD)
        self._sync = redis.Redis.from_url(
            rc.redis_url, decode_responses=True, socket_timeout=rc.backend_timeout_s
        )

    def key(self, user_id: str) -> str:
        return f"{self.prefix}h:{user_id}"

    @property
    def events_key(self) -> str:
        """The stream of recorded events, oldest first, until they are folded into the log."""
        return f"{self.prefix}events"

    def unfolded(self) -> tuple[list[FeedbackEvent], str | None]:
        """The events recorded and not yet folded into the log, and the last one's stream id."""
        entries = self._sync.xrange(self.events_key)
        events = [FeedbackEvent.model_validate_json(fields["event"]) for _, fields in entries]
        return events, (entries[-1][0] if entries else None)

    def folded(self, last_id: str) -> None:
        """Drop the stream's events up to `last_id` (they are in the log now)."""
        self._sync.xtrim(self.events_key, minid=_next_stream_id(last_id))

    async def history(self, user_id: str) -> list[str]:
        try:
            return await self.client.lrange(self.key(user_id), 0, -1)
        except self._errors as exc:
            raise Unavailable(f"user store at {self._url} unreachable: {exc}") from exc

    async def record(self, event: FeedbackEvent) -> bool:
        event_key = f"{self.prefix}e:{event.event_id}" if event.event_id else ""
        try:
            done = await self._record(
                keys=[self.key(event.user_id), event_key, self.events_key],
                args=[event.item_id, self.cap, int(self.event_id_ttl_s), event.model_dump_json()],
            )
        except self._errors as exc:
            raise Unavailable(f"could not record the event: {exc}") from exc
        return bool(done)

    async def erase(self, user_id: str) -> dict[str, int]:
        try:
            items = await self.client.llen(self.key(user_id))
            await self.client.delete(self.key(user_id))
        except self._errors as exc:
            raise Unavailable(f"user store at {self._url} unreachable: {exc}") from exc
        removed = await asyncio.to_thread(erase_user, self.config, self.feedback, user_id)
        return {**removed, "history_items": items}

    def load_log(self, wait_s: float = 600.0) -> bool:
        """Load the interaction log once per log file; True if this replica loaded it.

        The first replica to take the lock merges every user's log history with
        what the store holds for them (events recorded since come after the log,
        as the router would have applied them) and sets the log's marker; the
        others wait for the marker.
        """
        marker, lock = f"{self.prefix}log", f"{self.prefix}log:loading"
        digest = _log_digest(self.config.data_path / "interactions.parquet")
        deadline = time.monotonic() + wait_s
        while self._sync.get(marker) != digest:
            if self._sync.set(lock, "1", nx=True, ex=int(wait_s)):
                try:
                    n = self._merge(log_histories(self.config))
                    self._sync.set(marker, digest)
                    log.info("loaded the interaction log of %d users into %s", n, self._url)
                    return True
                finally:
                    self._sync.delete(lock)
            if time.monotonic() > deadline:
                raise TimeoutError(f"another replica has been loading {self._url} for {wait_s}s")
            time.sleep(0.2)
        return False

    def _merge(self, histories: dict[str, list[str]], batch: int = 1000) -> int:
        users = list(histories)
        for start in range(0, len(users), batch):
            chunk = users[start : start + batch]
            pipe = self._sync.pipeline(transaction=False)
            for user in chunk:
                pipe.lrange(self.key(user), 0, -1)
            held = pipe.execute()
            pipe = self._sync.pipeline(transaction=True)
            for user, since in zip(chunk, held, strict=True):
                merged = _merged(histories[user], since)[-self.cap :]
                pipe.delete(self.key(user))
                if merged:
                    pipe.rpush(self.key(user), *merged)
            pipe.execute()
        return len(users)

    def close(self) -> None:
        self._sync.close()


def _next_stream_id(stream_id: str) -> str:
    ms, seq = stream_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def _merged(log_items: list[str], held: Iterable[str]) -> list[str]:
    """The log's order, then what the store held that the log has not (newer events)."""
    in_log = set(log_items)
    return [*log_items, *(i for i in held if i not in in_log)]


def _log_digest(path: Path) -> str:
    if not path.exists():
        return "none"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def open_store(config: AppConfig, feedback: FeedbackLog) -> UserStore:
    """The store `router.user_store` names; Redis has the log loaded before it is returned."""
    if config.router.user_store == "redis":
        store = RedisStore(config, feedback)
        store.load_log()
        return store
    return LocalStore(config, feedback)
