"""CPU time of this machine's processes by role, for the load tester's capacity model.

`ServeCpuProbe(app)()` returns cumulative CPU seconds (user + system) per role: each
deployment of the app (`ray::ServeReplica:<app>:<Deployment>`, the numbered
`ShardRetriever-N` deployments together as `ShardRetriever`, the vLLM engine process
counted with `Reranker`), `proxy` (Serve's proxy actors and HAProxy), `ray` (raylets,
GCS, dashboard, agents, the Serve controller), `loadgen` (the calling process) and
`host` (every busy core of the machine, whatever runs there). Differences of two calls
divided by the seconds between them are the cores each role kept busy. Only processes of
this machine are seen: on a cluster of several machines each needs its own probe.
`part_of` names a process's part of the app, replica by replica; `llmrec bench
pipeline`'s CPU table (`cluster/bench/cpu.py`) uses it as it is, the probe groups it
into roles (`role_of`).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import psutil

__all__ = ["ServeCpuProbe", "part_of", "role_of"]

_REPLICA = "ray::ServeReplica:"
_PROXIES = ("ray::ProxyActor", "ray::HAProxyManager")
_RAY_MARKERS = ("ray::", "/ray/", "raylet", "gcs_server", "ray-dashboard")
_ROLE_OF_PART = {"llm engine": "Reranker", "other": None}


def part_of(cmdline: str, pid: int, own_pid: int, app: str | None = None) -> str:
    """The part of the app a process with this command line belongs to.

    A Serve replica is its deployment's name (`Router`, `ShardRetriever-0`, ...), also
    while Ray titles it after the method it runs (`...:Reranker.check_health`); vLLM's
    processes are `llm engine`; Serve's HTTP proxies (and HAProxy) `proxy`; Ray's other
    processes `ray`; the process `own_pid` `load generator`; anything else, and the
    replicas of an application other than `app` when one is given, `other`.
    """
    if pid == own_pid:
        return "load generator"
    if cmdline.startswith(_REPLICA):
        replica_app, _, deployment = cmdline.split(" ", 1)[0][len(_REPLICA) :].partition(":")
        if app is not None and replica_app != app:
            return "other"
        return deployment.split(".", 1)[0]  # without the `.method` Ray adds while it runs one
    if cmdline.startswith("VLLM::"):
        return "llm engine"
    if cmdline.startswith(_PROXIES) or "/haproxy" in cmdline.split(" ", 1)[0]:
        return "proxy"
    if any(marker in cmdline for marker in _RAY_MARKERS):
        return "ray"
    return "other"


def role_of(cmdline: list[str] | None, app: str) -> str | None:
    """The role a process with this command line plays (module docstring), or None: its
    `part_of` with the numbered deployments together and vLLM's engine in `Reranker`.
    psutil gives no command line (None) for a process it may not read."""
    part = part_of(" ".join(cmdline or ()), pid=-1, own_pid=0, app=app)
    if part in _ROLE_OF_PART:
        return _ROLE_OF_PART[part]
    return re.sub(r"-\d+$", "", part)


class ServeCpuProbe:
    """Cumulative CPU seconds by role (module docstring); one call scans the process table."""

    def __init__(self, app: str = "llmrec") -> None:
        self.app = app
        self.pid = os.getpid()

    def __call__(self) -> dict[str, float]:
        used: dict[str, float] = defaultdict(float)
        for proc in psutil.process_iter(["cmdline", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            role = "loadgen" if proc.pid == self.pid else role_of(proc.info["cmdline"], self.app)
            if role is not None:
                used[role] += times.user + times.system
        host = psutil.cpu_times()
        busy = ("user", "nice", "system", "irq", "softirq", "steal")  # guest time is in user
        used["host"] = sum(getattr(host, name, 0.0) for name in busy)
        return dict(used)
