"""The load generator: closed-loop users or open-loop Poisson arrivals over httpx/asyncio.

`LoadRunner(url, scenario, traffic).run()` sends the scenario's traffic to
`url` and returns every request as a `RequestRecord`. The run is a warm-up
(not measured) followed by the scenario's load steps; it ends at the end of
the last step or when `max_requests` measured requests have been sent,
whichever comes first, and then waits at most `request_timeout_s` for
answers still in flight. Only localhost is a valid target unless
`allow_hosts` names the URL's host. `headers` go on every request (the API key:
`loadtest.auth.auth_headers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from loadtest.errors import TargetRefused
from loadtest.scenario import Scenario
from loadtest.stats import RequestRecord, Summary, recent_window, summarize
from loadtest.tasks import PlannedRequest, TaskPicker, build_request
from loadtest.traffic import TrafficData
from loadtest.transport import AiohttpTransport

__all__ = [
    "LOCAL_HOSTS",
    "LiveSnapshot",
    "LoadRunner",
    "RunResult",
    "check_target",
]

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
TICK_S = 0.5
LIVE_WINDOW_S = 5.0


def check_target(url: str, allow_hosts: tuple[str, ...] | list[str] = ()) -> str:
    """The URL without a trailing slash; raises TargetRefused for hosts not on this machine."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise TargetRefused(f"{url!r}: give an http(s) URL such as http://127.0.0.1:8000")
    if parsed.host not in LOCAL_HOSTS | set(allow_hosts):
        raise TargetRefused(
            f"{url!r}: only localhost is load-tested by default; "
            f"pass --allow-host {parsed.host} if you own that service"
        )
    return url.rstrip("/")


@dataclass(frozen=True)
class LiveSnapshot:
    """What the live progress display shows, every half second."""

    label: str
    phase: str
    elapsed_s: float
    total_s: float
    mode: str
    load: float
    active: int
    in_flight: int
    sent: int
    rps: float
    p99_ms: float
    errors: int
    errors_by_status: dict[str, int]


ProgressHook = Callable[[LiveSnapshot], None]


@dataclass
class RunResult:
    """Every request of one run plus the measured windows of its load steps."""

    scenario: Scenario
    records: list[RequestRecord]
    wall_start: float
    """Unix time at which the measured part began."""
    measure_start_s: float
    """Seconds from the run's start to the first load step (the warm-up length)."""
    step_windows: list[tuple[float, float]]
    """(start, end) of each load step that ran, in seconds from the run's start."""
    stopped_by: str
    unsupported: list[str] = field(default_factory=list)
    """Tasks the service answered 404/405 (route missing) and that were switched off."""
    active_samples: list[tuple[float, int]] = field(default_factory=list)
    """(seconds from the run's start, users or requests in flight) every tick."""
    max_lag_ms: float = 0.0
    """Open loop: how late the generator sent an arrival at worst (its own overload)."""
    client_cpu_percent: float = 0.0
    """CPU time the generator used, as a share of one core over the run."""
    host_load: float = 0.0
    """Mean 1-minute load average of the host during the run (other work competes too)."""
    cpu_samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    """(seconds from the run's start, cumulative CPU seconds by role) every tick, when the
    caller gave a `cpu_probe` (`cluster/cpu_probe.py`); empty otherwise."""

    def cpu_cores(self, start: float, end: float) -> dict[str, float]:
        """Cores each role kept busy between `start` and `end` (seconds from the run's
        start), from the CPU samples nearest inside the window; {} without samples."""
        inside = [s for s in self.cpu_samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
            return {}
        (t0, first), (t1, last) = inside[0], inside[-1]
        return {
            role: round(max(last[role] - first.get(role, 0.0), 0.0) / (t1 - t0), 4) for role in last
        }

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for r in self.records if r.step >= 0]

    @property
    def measure_end_s(self) -> float:
        return self.step_windows[-1][1] if self.step_windows else self.measure_start_s

    def _answered_between(self, start: float, end: float) -> list[RequestRecord]:
        return [r for r in self.measured if start <= r.end_s < end]

    def _last_answer_s(self) -> float:
        return max((r.end_s for r in self.measured), default=self.measure_end_s)

    def step_summaries(self) -> list[Summary]:
        """One Summary per load step: requests sent in it, answers that arrived in it."""
        by_step: dict[int, list[RequestRecord]] = {}
        for r in self.measured:
            by_step.setdefault(r.step, []).append(r)
        out = []
        for i, (start, end) in enumerate(self.step_windows):
            last = i == len(self.step_windows) - 1
            done_end = max(end, self._last_answer_s() + 1e-9) if last else end
            out.append(
                summarize(
                    by_step.get(i, []),
                    duration_s=max(end - start, 1e-3),
                    slo_ms=self.scenario.slo_p99_ms,
                    completed=self._answered_between(start, done_end),
                    completed_s=max(done_end - start, 1e-3),
                )
            )
        return out

    def total_summary(self) -> Summary:
        """The Summary of the whole measured part (every step together)."""
        start = self.measure_start_s
        done_end = max(self.measure_end_s, self._last_answer_s() + 1e-9)
        return summarize(
            self.measured,
            duration_s=max(self.measure_end_s - start, 1e-3),
            slo_ms=self.scenario.slo_p99_ms,
            completed=self._answered_between(start, done_end),
            completed_s=max(done_end - start, 1e-3),
        )


class LoadRunner:
    """Sends one scenario's traffic to a service; see the module docstring."""

    def __init__(
        self,
        url: str,
        scenario: Scenario,
        traffic: TrafficData,
        *,
        allow_hosts: tuple[str, ...] | list[str] = (),
        progress: ProgressHook | None = None,
        label: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        cpu_probe: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.url = check_target(url, allow_hosts)
        self.cpu_probe = cpu_probe
        self.headers = dict(headers or {})
        self.scenario = scenario
        self.traffic = traffic
        self.progress = progress
        self.label = label
        self.transport = transport
        self.picker = TaskPicker(scenario.tasks)
        self.records: list[RequestRecord] = []
        self._t0 = 0.0
        self._end_s = 0.0
        self._sent = {True: 0, False: 0}  # measured?: count
        self._in_flight = 0
        self._active = 0
        self._stopped_by = "duration"
        self._stop_s: float | None = None
        self._stop = asyncio.Event()
        self._next_user = 0
        self._max_lag_ms = 0.0
        self._samples: list[tuple[float, int]] = []
        self._errors: Counter[str] = Counter()
        self._load: list[float] = []
        self._cpu: list[tuple[float, dict[str, float]]] = []

    # -- timeline -------------------------------------------------------------------------

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    def _phases(self) -> list[tuple[int, float, float, float]]:
        """(step, start, end, load) for the warm-up (-1) and every step."""
        sc = self.scenario
        phases = []
        if sc.warmup_s > 0:
            phases.append((-1, 0.0, sc.warmup_s, sc.steps[0]))
        for i, load in enumerate(sc.steps):
            start = sc.warmup_s + i * sc.step_s
            phases.append((i, start, start + sc.step_s, load))
        return phases

    def _step_at(self, t: float) -> int:
        sc = self.scenario
        if t < sc.warmup_s:
            return -1
        return min(int((t - sc.warmup_s) // sc.step_s), len(sc.steps) - 1)

    def _take_budget(self, step: int) -> bool:
        measured = step >= 0
        if self._sent[measured] >= self.scenario.max_requests:
            if measured and not self._stop.is_set():
                self._stopped_by = "max_requests"
                self._stop_s = self._now()
                self._stop.set()
            return False
        self._sent[measured] += 1
        return True

    # -- sending --------------------------------------------------------------------------

    async def _send(self, client: httpx.AsyncClient, req: PlannedRequest, step: int) -> None:
        self._in_flight += 1
        try:
            record = await self._attempt(client, req, step)
            if self.scenario.retry_failed and _retryable(record):
                again = await self._attempt(client, req, step)
                record = dataclasses.replace(
                    record, retry_ok=again.outcome == "ok", write=again.write
                )
        finally:
            self._in_flight -= 1
        self._keep(record)

    async def _attempt(
        self, client: httpx.AsyncClient, req: PlannedRequest, step: int
    ) -> RequestRecord:
        start = self._now()
        t = time.perf_counter()
        try:
            r = await client.request(req.method, req.path, json=req.body)
        except httpx.HTTPError as exc:
            return RequestRecord(
                name=req.name,
                method=req.method,
                start_s=start,
                latency_ms=(time.perf_counter() - t) * 1000.0,
                status=0,
                outcome="error",
                step=step,
                error=type(exc).__name__,
            )
        return self._record(req, step, start, (time.perf_counter() - t) * 1000.0, r)

    def _keep(self, record: RequestRecord) -> None:
        self.records.append(record)
        if record.step >= 0 and record.outcome in ("error", "dropped"):
            self._errors[str(record.status) if record.status else record.error or "transport"] += 1

    def _record(
        self, req: PlannedRequest, step: int, start: float, ms: float, r: httpx.Response
    ) -> RequestRecord:
        base = {
            "name": req.name,
            "method": req.method,
            "start_s": start,
            "latency_ms": ms,
            "status": r.status_code,
            "step": step,
            "size": len(r.content),
        }
        if r.is_success:
            if req.is_write:
                return RequestRecord(**base, outcome="ok", write=req.write)
            timings, degraded = None, ()
            with contextlib.suppress(ValueError, AttributeError):
                body = r.json()
                timings = {k: float(v) for k, v in (body.get("timings_ms") or {}).items()}
                degraded = tuple(body.get("degraded") or ())
            return RequestRecord(**base, outcome="ok", timings=timings, degraded=degraded)
        if req.is_write and r.status_code in (404, 405) and not _is_api_error(r):
            self.picker.disable(req.name)
            return RequestRecord(**base, outcome="unsupported", error="not supported")
        return RequestRecord(
            **base,
            outcome="error",
            error=f"HTTP {r.status_code}",
            retry_after="retry-after" in r.headers,
        )

    # -- closed loop ----------------------------------------------------------------------

    async def _user(self, client: httpx.AsyncClient, idx: int, stop: asyncio.Event) -> None:
        sc = self.scenario
        rng = random.Random(sc.seed * 1_000_003 + idx)
        lo, hi = sc.think_time_s
        self._active += 1
        try:
            n = 0
            user = self.traffic.pick_user(rng, with_history=True)
            while not (stop.is_set() or self._stop.is_set()):
                now = self._now()
                if now >= self._end_s:
                    return
                step = self._step_at(now)
                task = self.picker.pick(rng)
                if task is None:
                    return
                if not self._take_budget(step):
                    if step >= 0:
                        return
                    await self._sleep_until(sc.warmup_s)  # warm-up budget spent: wait it out
                    continue
                if n and n % sc.session_requests == 0:
                    user = self.traffic.pick_user(rng, with_history=True)
                n += 1
                await self._send(
                    client, build_request(task, user, self.traffic, rng, sc.history_len), step
                )
                think = rng.uniform(lo, hi)
                if think > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            stop.wait(), min(think, max(self._end_s - self._now(), 0))
                        )
        finally:
            self._active -= 1

    async def _closed_loop(self, client: httpx.AsyncClient) -> None:
        users: list[tuple[asyncio.Task, asyncio.Event]] = []
        retired: list[asyncio.Task] = []
        spawn_gap = 1.0 / self.scenario.spawn_rate
        for _, _, end, load in self._phases():
            target = int(load)
            while len(users) > target:
                task, stop = users.pop()
                stop.set()
                retired.append(task)
            while len(users) < target and self._now() < end and not self._stop.is_set():
                stop = asyncio.Event()
                self._next_user += 1
                users.append((asyncio.create_task(self._user(client, self._next_user, stop)), stop))
                await self._sleep_until(min(self._now() + spawn_gap, end))
            await self._sleep_until(end)
            if self._stop.is_set():
                break
        for _, stop in users:
            stop.set()
        await self._drain([t for t, _ in users] + retired)

    # -- open loop ------------------------------------------------------------------------

    async def _open_loop(self, client: httpx.AsyncClient) -> None:
        sc = self.scenario
        rng = random.Random(sc.seed)
        pending: set[asyncio.Task] = set()
        for step, start, end, rate in self._phases():
            t = start
            while not self._stop.is_set():
                t += rng.expovariate(rate)
                if t >= end:
                    break
                await self._sleep_until(t)
                self._max_lag_ms = max(self._max_lag_ms, (self._now() - t) * 1000.0)
                task = self.picker.pick(rng)
                if task is None or not self._take_budget(step):
                    break
                if self._in_flight >= sc.max_in_flight:
                    self._keep(
                        RequestRecord(
                            name=task.label,
                            method="POST",
                            start_s=self._now(),
                            latency_ms=0.0,
                            status=0,
                            outcome="dropped",
                            step=step,
                            error="dropped",
                        )
                    )
                    continue
                req = build_request(
                    task, self.traffic.pick_user(rng), self.traffic, rng, sc.history_len
                )
                job = asyncio.create_task(self._send(client, req, step))
                pending.add(job)
                job.add_done_callback(pending.discard)
            if self._stop.is_set():
                break
            await self._sleep_until(end)
        await self._drain(list(pending))

    # -- shared ---------------------------------------------------------------------------

    async def _sleep_until(self, t: float) -> None:
        delay = t - self._now()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _drain(self, tasks: list[asyncio.Task]) -> None:
        """Wait for answers still in flight, at most one request timeout, then cancel."""
        if not tasks:
            return
        done, late = await asyncio.wait(tasks, timeout=self.scenario.request_timeout_s + 1.0)
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _ticker(self) -> None:
        sc = self.scenario
        while True:
            await asyncio.sleep(TICK_S)
            now = self._now()
            active = self._active if sc.mode == "closed" else self._in_flight
            self._samples.append((now, active))
            self._load.append(os.getloadavg()[0])
            if self.cpu_probe is not None:
                self._cpu.append((now, await asyncio.to_thread(self.cpu_probe)))
            if self.progress is None:
                continue
            step = self._step_at(now)
            rps, p99, _ = recent_window(self.records, now, LIVE_WINDOW_S)
            errors = dict(sorted(self._errors.items()))
            self.progress(
                LiveSnapshot(
                    label=self.label,
                    phase="warm-up" if step < 0 else f"step {step + 1}/{len(sc.steps)}",
                    elapsed_s=now,
                    total_s=self._end_s,
                    mode=sc.mode,
                    load=sc.steps[max(step, 0)],
                    active=active,
                    in_flight=self._in_flight,
                    sent=self._sent[True],
                    rps=rps,
                    p99_ms=p99,
                    errors=sum(errors.values()),
                    errors_by_status=errors,
                )
            )

    def _default_transport(self, connections: int) -> httpx.AsyncBaseTransport | None:
        """The scenario's client: aiohttp underneath, or None for httpx's own pool."""
        return AiohttpTransport(connections) if self.scenario.client == "aiohttp" else None

    async def run(self) -> RunResult:
        """Run the warm-up and every load step; returns all records (see RunResult)."""
        sc = self.scenario
        concurrency = max(sc.users) if sc.mode == "closed" else sc.max_in_flight
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._t0 = time.perf_counter()
        self._end_s = sc.warmup_s + sc.duration_s
        wall_t0 = time.time()
        cpu0 = time.process_time()
        async with httpx.AsyncClient(
            base_url=self.url,
            headers=self.headers,
            timeout=sc.request_timeout_s,
            limits=limits,
            trust_env=False,
            transport=self.transport or self._default_transport(concurrency),
        ) as client:
            ticker = asyncio.create_task(self._ticker())
            try:
                if sc.mode == "closed":
                    await self._closed_loop(client)
                else:
                    await self._open_loop(client)
            finally:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        stop_at = self._stop_s if self._stop_s is not None else self._end_s
        windows = [
            (start, min(end, stop_at))
            for step, start, end, _ in self._phases()
            if step >= 0 and start < stop_at
        ]
        wall = max(self._now(), 1e-3)
        return RunResult(
            scenario=sc,
            records=sorted(self.records, key=lambda r: r.start_s),
            wall_start=wall_t0 + sc.warmup_s,
            measure_start_s=sc.warmup_s,
            step_windows=windows,
            stopped_by=self._stopped_by,
            unsupported=sorted(self.picker.disabled),
            active_samples=self._samples,
            max_lag_ms=self._max_lag_ms,
            client_cpu_percent=100.0 * (time.process_time() - cpu0) / wall,
            host_load=sum(self._load) / len(self._load) if self._load else os.getloadavg()[0],
            cpu_samples=self._cpu,
        )


def _retryable(record: RequestRecord) -> bool:
    """A failure a client would try once more: no answer, 429 or a 5xx."""
    return record.outcome == "error" and (record.status in (0, 429) or record.status >= 500)


def _is_api_error(r: httpx.Response) -> bool:
    """True when the body is an llmrec error (`{"error": ...}`), not a missing route."""
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "error" in body
