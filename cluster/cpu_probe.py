"""CPU time of this machine's processes by role, for the load tester's capacity model.

`ServeCpuProbe(app)()` returns cumulative CPU seconds (user + system) per role: each
deployment of the app (`ray::ServeReplica:<app>:<Deployment>`, the numbered
`ShardRetriever-N` deployments together as `ShardRetriever`, the vLLM engine process
counted with `Reranker`), `proxy` (Serve's proxy actors and HAProxy), `ray` (raylets,
GCS, dashboard, agents, the Serve controller), `loadgen` (the calling process) and
`host` (every busy core of the machine, whatever runs there). Differences of two calls
divided by the seconds between them are the cores each role kept busy. Only processes of
this machine are seen: on a cluster of several machines each needs its own probe.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import psutil

__all__ = ["ServeCpuProbe", "role_of"]

_RAY_TITLES = ("ray::ServeController", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::IDLE")
_RAY_BINARIES = ("raylet", "gcs_server")


def role_of(cmdline: list[str], app: str) -> str | None:
    """The role a process with this command line plays (module docstring), or None."""
    if not cmdline:
        return None
    title = cmdline[0]
    prefix = f"ray::ServeReplica:{app}:"
    if title.startswith(prefix):
        deployment = title[len(prefix) :].split(".", 1)[0]  # `.method` while it runs one
        return re.sub(r"-\d+$", "", deployment)
    if title.startswith("VLLM::"):
        return "Reranker"
    if title.startswith("ray::ProxyActor") or os.path.basename(title) == "haproxy":
        return "proxy"
    if title.startswith(_RAY_TITLES) or os.path.basename(title) in _RAY_BINARIES:
        return "ray"
    if title.startswith("ray-dashboard") or any("ray/dashboard" in a for a in cmdline[:3]):
        return "ray"
    if any(a.endswith(("log_monitor.py", "monitor.py")) for a in cmdline[:3]):
        return "ray"
    return None


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
