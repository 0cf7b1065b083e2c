"""Scenarios: what traffic to send, how much, for how long, read from YAML.

A scenario names weighted tasks (recommend by user id, by history, by free
text, each with or without rerank/explain, and feedback), a load shape and
its bounds. `mode: closed` runs simulated users with think time, started at
`spawn_rate` per second; `mode: open` sends Poisson arrivals at a target rate.
`users` (closed) or `rates_rps` (open) is a list of load steps: the measured
`duration_s` is split evenly between them, so one run gives latency at several
offered loads. Every run is bounded by `duration_s` and `max_requests`.

The scenarios shipped in `loadtest/scenarios/` are found by name
(`retrieval`, `rerank`, `full`); any other value is read as a YAML path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loadtest.errors import LoadtestError

__all__ = [
    "SCENARIO_DIR",
    "Scenario",
    "TaskSpec",
    "builtin_scenarios",
    "load_scenario",
]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

TaskKind = Literal["user", "history", "query", "user_query", "feedback", "upsert"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class TaskSpec(_Strict):
    """One kind of request a simulated user makes, picked with probability ∝ `weight`."""

    kind: TaskKind
    """user: by user id; history: by a recent history; query: free text;
    user_query: user id plus free text; feedback: `POST /v1/feedback`; upsert: `POST
    /v1/items` with one new item (its id recorded, so what was acknowledged can be re-read)."""
    weight: float = Field(1.0, ge=0)
    """Relative frequency; 0 keeps the task listed but never sent."""
    name: str | None = None
    """Name in reports and the Locust CSV files (default: derived from kind and flags)."""
    k: int = Field(10, ge=1, le=100)
    """Items asked for."""
    rerank: bool = False
    """Ask for LLM reranking."""
    explain: bool = False
    """Ask for generated explanations."""
    deadline_ms: int | None = Field(None, ge=10, le=120_000)
    """Request deadline; None leaves the server's default."""
    category_filter: float = Field(0.0, ge=0, le=1)
    """Probability that the request carries a one-category filter."""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.kind in ("feedback", "upsert"):
            return self.kind
        flags = "".join(f"+{f}" for f in ("rerank", "explain") if getattr(self, f))
        return f"recommend:{self.kind}{flags}"


class Scenario(_Strict):
    """A load test: tasks, load shape and bounds (see the module docstring)."""

    name: str = "custom"
    """Scenario name, shown in reports."""
    description: str = ""
    """One line on what the scenario measures."""
    mode: Literal["closed", "open"] = "closed"
    """closed: N users with think time; open: Poisson arrivals at a rate."""
    users: list[int] = Field(default_factory=lambda: [8], min_length=1, max_length=32)
    """Closed loop: simulated users of each load step."""
    rates_rps: list[float] = Field(default_factory=lambda: [10.0], min_length=1, max_length=32)
    """Open loop: arrival rate (requests/s) of each load step."""
    spawn_rate: float = Field(10.0, gt=0, le=10_000)
    """Closed loop: users started (or stopped) per second when the user count changes."""
    think_time_s: tuple[float, float] = (0.0, 0.5)
    """Closed loop: a user waits uniformly between these bounds after each answer."""
    duration_s: float = Field(30.0, gt=0, le=86_400)
    """Measured time, split evenly between the load steps (warm-up not included)."""
    max_requests: int = Field(100_000, ge=1, le=10_000_000)
    """Most requests measured; the warm-up is bounded by the same count."""
    warmup_s: float = Field(5.0, ge=0, le=3_600)
    """Traffic at the first step's load before measuring, not recorded."""
    request_timeout_s: float = Field(30.0, gt=0, le=600)
    """Client timeout of one request; a timed-out request counts as an error."""
    slo_p99_ms: float = Field(500.0, gt=0)
    """Latency objective: goodput counts successful answers at most this slow."""
    max_error_rate: float = Field(0.01, ge=0, le=1)
    """A load step meets the SLO only when its error rate is at most this."""
    max_in_flight: int = Field(1_000, ge=1, le=100_000)
    """Open loop: arrivals beyond this many unanswered requests are dropped and counted."""
    history_len: int = Field(20, ge=1, le=1000)
    """Most recent items sent by `history` tasks."""
    session_requests: int = Field(10, ge=1)
    """Closed loop: a simulated user keeps one user id for this many requests, then
    another person takes the seat (so traffic covers many ids, not `users` of them)."""
    retry_failed: bool = False
    """Send a request that failed (5xx, 429 or no answer) once more at once, as a client
    with one retry would; the record keeps the first outcome and the retry's."""
    client: Literal["aiohttp", "httpx"] = "aiohttp"
    """What sends the requests: httpx's API over aiohttp's connector (cheap per request, so
    the generator stays well below the service's cost past its capacity) or httpx's own
    pool (whose cost per request grows with the connections open)."""
    seed: int = 0
    """Random seed of user picks, tasks, think times and arrivals."""
    tasks: list[TaskSpec] = Field(min_length=1)
    """What users do (see TaskSpec)."""
    queries: list[str] = []
    """Extra free-text queries, mixed with ones drawn from the catalog text."""

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if not any(t.weight > 0 for t in self.tasks):
            raise ValueError("tasks: give at least one task a weight above 0")
        lo, hi = self.think_time_s
        if not 0 <= lo <= hi <= 3600:
            raise ValueError("think_time_s: need 0 <= min <= max <= 3600")
        if any(u < 1 or u > 10_000 for u in self.users):
            raise ValueError("users: each step needs 1..10000 users")
        if any(r <= 0 or r > 100_000 for r in self.rates_rps):
            raise ValueError("rates_rps: each step needs a rate in (0, 100000]")
        labels = [t.label for t in self.tasks]
        if len(set(labels)) != len(labels):
            raise ValueError("tasks: two tasks share a name; set `name` on one of them")
        return self

    @property
    def steps(self) -> list[float]:
        """The load of each step: users (closed) or requests/s (open)."""
        return [float(u) for u in self.users] if self.mode == "closed" else list(self.rates_rps)

    @property
    def step_s(self) -> float:
        return self.duration_s / len(self.steps)

    def with_overrides(self, **changes: Any) -> Scenario:
        """A validated copy with the given fields replaced (None values are ignored)."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        try:
            return Scenario.model_validate(data)
        except ValidationError as exc:
            raise LoadtestError(f"scenario {self.name!r}: {_errors(exc)}") from exc


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'scenario'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name, or a YAML file; raises LoadtestError naming the bad field."""
    path = Path(name_or_path)
    if not path.suffix and (SCENARIO_DIR / f"{path}.yaml").exists():
        path = SCENARIO_DIR / f"{path}.yaml"
    if not path.exists():
        raise LoadtestError(
            f"scenario {str(name_or_path)!r}: no such file and not one of {builtin_scenarios()}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LoadtestError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise LoadtestError(f"{path}: expected a mapping of scenario fields")
    data.setdefault("name", path.stem)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise LoadtestError(f"{path}: {_errors(exc)}") from exc
