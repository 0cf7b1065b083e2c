"""What LLM work costs on this replica, and whether a request can still afford it.

`EngineCost` learns seconds per prompt token and per decode step from the
engine's own calls (the warm-up at start included), so the same code budgets
a 2-core AVX2 CPU, an AVX-512 CPU and a GPU. `Admission` bounds the work in
flight: it refuses at once when its queue is full and refuses work that,
behind what is already running, would end after the caller's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from deployments.errors import DeadlineExceeded, QueueFull

__all__ = ["Admission", "EngineCost", "Work"]

_MIN_PREFILL_SAMPLE = 32
"""Calls with fewer new prompt tokens than this say little about the per-token cost."""


@dataclass(frozen=True)
class Work:
    """Predicted seconds of one engine call: computing its prompt, then decoding."""

    prefill_s: float
    decode_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.prefill_s + self.decode_s


@dataclass
class EngineCost:
    """Exponentially weighted estimates of the engine's costs, in seconds.

    A decode step of a batch of `width` sequences costs `step_s + width *
    seq_step_s`: a fixed part (reading the weights, scheduling) and a part
    that grows with the batch. The starting values are deliberately slow (a
    small model on one CPU core); the warm-up replaces them with measurements
    before any request (`calibrate_steps` at two widths).
    """

    prefill_s: float = 0.004
    """Per prompt token that is not served from the prefix cache."""
    step_s: float = 0.05
    """Per decode step, whatever the batch width."""
    seq_step_s: float = 0.01
    """Per decode step and sequence of the batch."""
    call_s: float = 0.03
    """Fixed cost of one engine call (scheduling, sampling, detokenising)."""
    smoothing: float = 0.3
    """Weight of the newest observation (the first one replaces the starting value)."""
    observed: set[str] = field(default_factory=set)
    """Which estimates have been measured at least once."""

    def step_cost(self, width: int = 1) -> float:
        """Seconds of one decode step of a batch of `width` sequences."""
        return self.step_s + max(width, 1) * self.seq_step_s

    def predict(self, new_tokens: int, steps: int = 1, width: int = 1) -> float:
        """Seconds for a call that computes `new_tokens` prompt tokens, then `steps` decode
        steps of `width` sequences."""
        return self.work(new_tokens, steps, width).seconds

    def work(self, new_tokens: int, steps: int = 1, width: int = 1) -> Work:
        """`predict`, split into the prompt part and the decode part."""
        decode = max(steps - 1, 0) * self.step_cost(width)
        return Work(self.call_s + new_tokens * self.prefill_s, decode)

    def _mix(self, name: str, new: float) -> None:
        old = getattr(self, name)
        mixed = (
            new
            if name not in self.observed
            else (1.0 - self.smoothing) * old + self.smoothing * new
        )
        setattr(self, name, mixed)
        self.observed.add(name)

    def observe_prefill(self, new_tokens: int, seconds: float) -> None:
        """A one-step call (scoring) that computed `new_tokens` prompt tokens in `seconds`."""
        if new_tokens >= _MIN_PREFILL_SAMPLE:
            self._mix("prefill_s", max(seconds - self.call_s, 0.0) / new_tokens)
        else:
            self._mix("call_s", max(seconds - new_tokens * self.prefill_s, 0.0))

    def decode_step_of(self, new_tokens: int, steps: int, seconds: float) -> float | None:
        """Seconds per decode step of a call, its prompt part taken out (`None`: one step)."""
        if steps <= 1:
            return None
        return max(seconds - self.call_s - new_tokens * self.prefill_s, 0.0) / (steps - 1)

    def calibrate_steps(self, samples: Sequence[tuple[int, float]]) -> None:
        """Set the step costs from `(width, seconds per step)` at two widths or more
        (a least-squares line, neither part below zero)."""
        widths = {w for w, _ in samples}
        if len(widths) < 2:
            raise ValueError("calibrate_steps needs samples at two widths or more")
        n = len(samples)
        mean_w = sum(w for w, _ in samples) / n
        mean_s = sum(s for _, s in samples) / n
        spread = sum((w - mean_w) ** 2 for w, _ in samples)
        slope = max(sum((w - mean_w) * (s - mean_s) for w, s in samples) / spread, 0.0)
        self.seq_step_s = slope
        self.step_s = max(mean_s - slope * mean_w, 0.0)
        self.observed.add("step")

    def observe_generate(self, new_tokens: int, steps: int, seconds: float, width: int = 1) -> None:
        """A batch of `width` sequences that computed `new_tokens` prompt tokens and ran
        `steps` decode steps: both step costs move by the same factor toward it."""
        step = self.decode_step_of(new_tokens, steps, seconds)
        if step is None:
            return
        if "step" not in self.observed:
            self.step_s, self.seq_step_s = step, 0.0
            self.observed.add("step")
            return
        ratio = step / max(self.step_cost(width), 1e-9)
        factor = (1.0 - self.smoothing) + self.smoothing * ratio
        self.step_s *= factor
        self.seq_step_s *= factor

    def as_json(self) -> dict[str, float]:
        return {
            "prefill_ms_per_token": round(self.prefill_s * 1000, 3),
            "decode_ms_per_step": round(self.step_s * 1000, 2),
            "decode_ms_per_step_and_sequence": round(self.seq_step_s * 1000, 2),
            "call_ms": round(self.call_s * 1000, 2),
        }


class Admission:
    """A bounded queue of LLM calls with deadline-aware admission.

    `admit(work, deadline)` is a context manager around one engine call
    predicted to cost `work`. It raises `QueueFull` at once when `max_pending`
    calls are already in flight, and `DeadlineExceeded` when the call would
    end after `deadline` (a `time.time()` value). A new call waits for the
    prompts still being computed ahead of it (prefill is compute-bound: their
    remaining prefill adds up), but not for their decoding: the engine batches
    the decode steps of every running sequence together.
    """

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._running: dict[int, tuple[float, float]] = {}  # id -> (start, predicted prefill s)
        self._next = 0
        self.refused: dict[str, int] = {"queue_full": 0, "deadline": 0}

    @property
    def pending(self) -> int:
        return len(self._running)

    def backlog_s(self, now: float | None = None) -> float:
        """Predicted seconds of prompt computation still ahead of a call admitted now."""
        now = time.time() if now is None else now
        return sum(max(prefill - (now - start), 0.0) for start, prefill in self._running.values())

    def fits(self, work: Work, deadline: float | None) -> bool:
        """Whether `work`, started behind the prompts in flight, ends by `deadline`."""
        return deadline is None or time.time() + self.backlog_s() + work.seconds <= deadline

    def check(self, work: Work, deadline: float | None) -> None:
        """Raise as `admit` would, without admitting."""
        if self.pending >= self.max_pending:
            self.refused["queue_full"] += 1
            raise QueueFull(f"LLM queue full ({self.pending} calls in flight)")
        if deadline is not None and not self.fits(work, deadline):
            self.refused["deadline"] += 1
            backlog = self.backlog_s()
            late = time.time() + backlog + work.seconds - deadline
            raise DeadlineExceeded(
                f"LLM work of ~{work.seconds * 1000:.0f} ms behind ~{backlog * 1000:.0f} ms "
                f"of prompts in flight would end {late * 1000:.0f} ms past the deadline"
            )

    @contextmanager
    def admit(self, work: Work, deadline: float | None) -> Iterator[None]:
        self.check(work, deadline)
        key = self._next
        self._next += 1
        self._running[key] = (time.time(), work.prefill_s)
        try:
            yield
        finally:
            del self._running[key]
