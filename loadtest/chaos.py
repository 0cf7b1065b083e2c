"""Chaos runs: steady load over HTTP while replicas are killed, then what was lost.

`run_chaos(url, scenario, traffic, plan, kill)` runs the scenario (one closed
or open load step, `retry_failed` on) for `plan.duration_s`; after a steady
phase of `plan.steady_s` it calls `kill(target)` every `plan.kill_every_s`
seconds, cycling through `plan.targets` in a seeded random order. Killing is
the caller's (`cluster/faults.py` kills Serve replicas and the vLLM engine of
the local node); this module only talks HTTP. After each kill it polls
`GET /v1/health` until the service is ready again (the time to recover).
When the load has stopped it re-reads every write the service acknowledged:
each upserted item with `GET /v1/items/{id}`, each feedback event through
`feedback_recorded` when the caller can read the event log.

`chaos_report` turns the run into numbers: success without and with one
client retry, p99 of the chaos phase against the steady phase, the share of
degraded answers, time to recover per kill, acknowledged writes lost, and a
5-second timeline; `write_chaos_report` writes it as JSON, Markdown and a
plot.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtest.runner import LoadRunner, RunResult
from loadtest.scenario import Scenario
from loadtest.stats import RequestRecord, latency_percentile
from loadtest.traffic import TrafficData

__all__ = ["ChaosPlan", "ChaosRun", "Kill", "chaos_report", "run_chaos", "write_chaos_report"]

BUCKET_S = 5.0
"""Width of one timeline bucket."""


@dataclass(frozen=True)
class ChaosPlan:
    """How long to run, when to kill, and what."""

    duration_s: float = 600.0
    steady_s: float = 60.0
    """Load without kills first: the phase the chaos phase is compared with."""
    kill_every_s: float = 60.0
    targets: tuple[str, ...] = ("Encoder", "ShardRetriever", "Reranker")
    """What `kill` is called with, in turn (a seeded shuffle of each round)."""
    recover_timeout_s: float = 300.0
    """How long to wait for `/v1/health` after a kill before calling it unrecovered."""
    health_poll_s: float = 1.0
    """Interval of the `/v1/health` polls that time the recovery."""
    seed: int = 0

    def kill_times(self) -> list[float]:
        """Seconds from the start of the load at which a kill is due."""
        times, t = [], self.steady_s
        while t < self.duration_s:
            times.append(t)
            t += self.kill_every_s
        return times


@dataclass
class Kill:
    """One kill: when, what, and how long until the service was ready again."""

    at_s: float
    target: str
    killed: str
    """What the killer says it killed (e.g. a process title and pid), or why nothing."""
    recovered_s: float | None = None
    """Seconds from the kill until `/v1/health` answered ready; None if it never did."""


Killer = Callable[[str], str]
"""Kills one thing of a target kind and says what (raises `LookupError` if none runs)."""


@dataclass
class ChaosRun:
    """The load's records, the kills, and which acknowledged writes could not be read back."""

    plan: ChaosPlan
    result: RunResult
    kills: list[Kill]
    writes_acknowledged: int
    writes_lost: list[str] = field(default_factory=list)
    writes_unchecked: int = 0
    """Acknowledged writes no check could read back (feedback without `feedback_recorded`)."""


async def run_chaos(
    url: str,
    scenario: Scenario,
    traffic: TrafficData,
    plan: ChaosPlan,
    kill: Killer,
    *,
    feedback_recorded: Callable[[], set[tuple[str, str, str]]] | None = None,
    allow_hosts: tuple[str, ...] = (),
    transport: httpx.AsyncBaseTransport | None = None,
    headers: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ChaosRun:
    """Load `url` for `plan.duration_s` while `kill` strikes on schedule (module docstring).

    `feedback_recorded()` returns the (user, item, ts) of every event the
    service holds; without it feedback writes are counted as unchecked.
    `headers` go on every request: the load, the health polls and the read-backs.
    """
    scenario = scenario.with_overrides(
        duration_s=plan.duration_s, warmup_s=0.0, retry_failed=True, seed=plan.seed
    )
    runner = LoadRunner(
        url, scenario, traffic, allow_hosts=allow_hosts, transport=transport, headers=headers
    )
    say = progress or (lambda _line: None)
    load = asyncio.create_task(runner.run())
    kills: list[Kill] = []
    watchers: list[asyncio.Task] = []
    async with httpx.AsyncClient(
        base_url=runner.url,
        headers=runner.headers,
        timeout=10.0,
        trust_env=False,
        transport=transport,
    ) as client:
        started = time.perf_counter()
        order = _target_order(plan)
        for due in plan.kill_times():
            await asyncio.sleep(max(due - (time.perf_counter() - started), 0.0))
            if load.done():
                break
            target = next(order)
            try:
                killed = await asyncio.to_thread(kill, target)
            except LookupError as exc:
                killed = f"nothing killed: {exc}"
            event = Kill(round(time.perf_counter() - started, 2), target, killed)
            kills.append(event)
            say(f"{event.at_s:6.0f}s  killed {target}: {killed}")
            watchers.append(asyncio.create_task(_time_to_ready(client, event, plan)))
        result = await load
        await asyncio.gather(*watchers)
        acknowledged = [r for r in result.records if r.write]
        lost, unchecked = await _lost_writes(client, acknowledged, feedback_recorded)
    return ChaosRun(plan, result, kills, len(acknowledged), lost, unchecked)


def _target_order(plan: ChaosPlan) -> Iterable[str]:
    """Every target once per round, rounds shuffled with the plan's seed."""
    rng = random.Random(plan.seed)
    while True:
        round_ = list(plan.targets)
        rng.shuffle(round_)
        yield from round_


async def _time_to_ready(client: httpx.AsyncClient, event: Kill, plan: ChaosPlan) -> None:
    """Poll `/v1/health` from the kill on; set `event.recovered_s` at the first ready."""
    killed_at = time.perf_counter()
    await asyncio.sleep(plan.health_poll_s)  # Serve needs a moment to notice the death at all
    while time.perf_counter() - killed_at < plan.recover_timeout_s:
        try:
            r = await client.get("/v1/health")
            if r.status_code == 200:
                event.recovered_s = round(time.perf_counter() - killed_at, 1)
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(plan.health_poll_s)


async def _lost_writes(
    client: httpx.AsyncClient,
    acknowledged: list[RequestRecord],
    feedback_recorded: Callable[[], set[tuple[str, str, str]]] | None,
) -> tuple[list[str], int]:
    """Acknowledged writes that cannot be read back, and how many had no way to check."""
    lost: list[str] = []
    unchecked = 0
    events = await asyncio.to_thread(feedback_recorded) if feedback_recorded else None
    for record in acknowledged:
        kind, *key = record.write
        if kind == "item":
            r = await client.get(f"/v1/items/{key[0]}")
            if r.status_code != 200:
                lost.append(f"item {key[0]} (GET answered {r.status_code})")
        elif events is None:
            unchecked += 1
        elif tuple(key) not in events:
            lost.append(f"feedback {'/'.join(key)}")
    return lost, unchecked


# --- the report ------------------------------------------------------------------------


def chaos_report(run: ChaosRun) -> dict[str, Any]:
    """The numbers of a chaos run (see the module docstring), JSON-ready."""
    records = [r for r in run.result.records if r.answered]
    first_kill = run.kills[0].at_s if run.kills else run.plan.duration_s
    steady = [r for r in records if r.start_s < first_kill]
    chaos = [r for r in records if r.start_s >= first_kill]
    p99_steady = latency_percentile(steady, 99)
    p99_chaos = latency_percentile(chaos, 99)
    recovered = [k.recovered_s for k in run.kills if k.recovered_s is not None]
    return {
        "plan": asdict(run.plan),
        "requests": len(records),
        "success_no_retry": _share(records, lambda r: r.outcome == "ok"),
        "success_one_retry": _share(records, lambda r: r.outcome == "ok" or bool(r.retry_ok)),
        "degraded_share": _share(records, lambda r: r.outcome == "ok" and bool(r.degraded)),
        "p99_steady_ms": round(p99_steady, 1),
        "p99_chaos_ms": round(p99_chaos, 1),
        "p99_ratio": round(p99_chaos / p99_steady, 3) if p99_steady else None,
        "errors": _count(r.error or "error" for r in records if r.outcome == "error"),
        "degraded_stages": _count(d for r in records for d in r.degraded),
        "kills": [asdict(k) for k in run.kills],
        "recovery_s_max": max(recovered) if recovered else None,
        "unrecovered_kills": sum(k.recovered_s is None for k in run.kills),
        "writes_acknowledged": run.writes_acknowledged,
        "writes_lost": len(run.writes_lost),
        "writes_lost_detail": run.writes_lost[:50],
        "writes_unchecked": run.writes_unchecked,
        "timeline": _timeline(records, run.plan.duration_s),
    }


def _share(records: list[RequestRecord], keep: Callable[[RequestRecord], bool]) -> float:
    return round(sum(map(keep, records)) / len(records), 5) if records else 0.0


def _count(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _timeline(records: list[RequestRecord], duration_s: float) -> list[dict[str, float]]:
    """Per `BUCKET_S` of start time: requests, success share, degraded share, p99."""
    buckets: list[list[RequestRecord]] = [[] for _ in range(max(int(duration_s // BUCKET_S), 1))]
    for r in records:
        buckets[min(int(r.start_s // BUCKET_S), len(buckets) - 1)].append(r)
    return [
        {
            "t_s": i * BUCKET_S,
            "requests": len(b),
            "success": _share(b, lambda r: r.outcome == "ok"),
            "degraded": _share(b, lambda r: r.outcome == "ok" and bool(r.degraded)),
            "p99_ms": round(latency_percentile(b, 99), 1),
        }
        for i, b in enumerate(buckets)
    ]


def write_chaos_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """`chaos.json`, `chaos.md` and `chaos.png` (success and p99 over time, kills marked)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "chaos.json",
        "markdown": out_dir / "chaos.md",
        "plot": out_dir / "chaos.png",
    }
    paths["json"].write_text(json.dumps(report, indent=1))
    from loadtest.plots import chaos_timeline

    chaos_timeline(report, paths["plot"])
    paths["markdown"].write_text(_markdown(report, paths["plot"].name))
    return paths


def _markdown(report: dict[str, Any], plot: str) -> str:
    plan = report["plan"]
    lines = [
        "# Chaos run",
        "",
        f"{plan['duration_s']:.0f} s of load, a kill every {plan['kill_every_s']:.0f} s after "
        f"{plan['steady_s']:.0f} s steady, targets {', '.join(plan['targets'])}.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| requests | {report['requests']} |",
        f"| success without retry | {report['success_no_retry']:.2%} |",
        f"| success with one retry | {report['success_one_retry']:.2%} |",
        f"| degraded answers | {report['degraded_share']:.2%} |",
        f"| p99 steady / chaos | {report['p99_steady_ms']:.0f} / {report['p99_chaos_ms']:.0f} ms"
        f" ({report['p99_ratio']}x) |",
        f"| slowest recovery | {report['recovery_s_max']} s |",
        f"| unrecovered kills | {report['unrecovered_kills']} |",
        f"| acknowledged writes | {report['writes_acknowledged']} |",
        f"| acknowledged writes lost | {report['writes_lost']} |",
        f"| writes not checkable | {report['writes_unchecked']} |",
        "",
        f"![success and p99 over time]({plot})",
        "",
        "| at | target | killed | ready again after |",
        "| --- | --- | --- | --- |",
    ]
    for k in report["kills"]:
        ready = "never" if k["recovered_s"] is None else f"{k['recovered_s']} s"
        lines.append(f"| {k['at_s']:.0f} s | {k['target']} | {k['killed']} | {ready} |")
    lines += ["", f"Errors: {report['errors'] or 'none'}.", ""]
    lines.append(f"Degraded stages: {report['degraded_stages'] or 'none'}.")
    if "nodes" in report:  # a multi-node run (`cluster.multinode`)
        lines += _node_lines(report)
    return "\n".join(lines) + "\n"


def _node_lines(report: dict[str, Any]) -> list[str]:
    gone = report["success_while_node_gone"]
    lines = [
        "",
        f"## Nodes: {report['killed_node']} killed, a new worker after "
        f"{report['replace_after_s']:.0f} s",
        "",
        f"Success while the node was gone: {'–' if gone is None else f'{gone:.2%}'}; "
        f"degraded then: {report['degraded_while_node_gone'] or 0:.2%}.",
        "",
        "| node | id | state | resources |",
        "| --- | --- | --- | --- |",
    ]
    for n in report["nodes"]:
        lines.append(f"| {n['name']} | {n['node_id'][:8]} | {n['state']} | {n['resources']} |")
    for phase in ("before", "after"):
        lines += ["", f"Placement {phase}:", "", "| deployment | state | node | pid |"]
        lines.append("| --- | --- | --- | --- |")
        for r in report[f"placement_{phase}"]:
            lines.append(f"| {r['deployment']} | {r['state']} | {r['node']} | {r['pid']} |")
    return lines
