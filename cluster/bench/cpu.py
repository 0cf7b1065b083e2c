"""Where a benchmark's CPU goes: CPU seconds of this machine's processes, by part of the app.

`llmrec bench pipeline` reads `cpu_seconds()` as each measured window opens and
closes and divides the difference by the requests answered in it: the CPU
milliseconds a request cost the router, each retriever, the encoder, the
proxies, the LLM engine, Ray's own processes, the load generator and the rest
of the machine. On a machine whose cores are saturated that says which part to
make cheaper; latency stages (`timings_ms`) cannot, since they include waiting.
Only processes on this machine are seen, so the numbers mean something only
when the service runs here (the bench's default target, 127.0.0.1). Processes are
told apart by `cluster.cpu_probe.part_of`, as the load tester's probe does.
"""

from __future__ import annotations

import os

import psutil

from cluster.cpu_probe import part_of

__all__ = ["PARTS_ORDER", "cpu_seconds", "part_of", "per_request_ms"]

PARTS_ORDER = ("Router", "ShardRetriever", "Encoder", "Reranker", "llm engine", "proxy")
"""How tables order the parts (a part named after a deployment keeps its replica suffix);
the rest follow: ray, load generator, other."""

Process = tuple[int, float]
"""A process: its pid and when it started (a pid the system reuses is another process)."""


def cpu_seconds() -> dict[Process, tuple[str, float]]:
    """(pid, start) → (part, user + system CPU seconds so far) of every process this user
    can read."""
    own = os.getpid()
    out = {}
    for proc in psutil.process_iter(["cmdline", "cpu_times", "create_time"]):
        times = proc.info["cpu_times"]
        if times is None:  # gone, or not ours to read
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        out[proc.pid, proc.info["create_time"]] = (
            part_of(cmdline, proc.pid, own),
            times.user + times.system,
        )
    return out


def per_request_ms(
    before: dict[Process, tuple[str, float]],
    after: dict[Process, tuple[str, float]],
    requests: int,
) -> dict[str, float]:
    """CPU milliseconds per request by part between two `cpu_seconds()` readings.

    A process that started in between counts from 0; one that ended is not counted
    (its time is lost with it). Parts that used no CPU are left out.
    """
    if requests <= 0:
        return {}
    spent: dict[str, float] = {}
    for process, (part, seconds) in after.items():
        earlier = before.get(process)
        used = seconds - (earlier[1] if earlier else 0.0)
        if used > 0:
            spent[part] = spent.get(part, 0.0) + used
    return {part: round(1000.0 * s / requests, 3) for part, s in spent.items()}
