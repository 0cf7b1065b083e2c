"""Faults on purpose: kill a Serve replica, or the vLLM engine inside one, on this node.

Serve replicas run as Ray worker processes titled
`ray::ServeReplica:<app>:<deployment>` (a `.method` suffix while they run
one); the reranker's vLLM engine is a child process titled
`VLLM::EngineCore`. `ReplicaKiller(app)(target)` sends SIGKILL to one of
them, picked at random: what a crash or the kernel's OOM killer does, with
no chance to clean up. Serve notices the dead replica and starts another; a
dead engine fails the reranker's health check, and Serve replaces that
replica too. Only processes of this machine are seen.
"""

from __future__ import annotations

import os
import random
import signal

import psutil

__all__ = ["ENGINE", "ReplicaKiller", "replica_processes"]

ENGINE = "engine"
"""The target that names the vLLM engine process rather than a deployment."""
_ENGINE_TITLE = "VLLM::EngineCore"


def replica_processes(
    app: str, deployment: str, ancestor: int | None = None
) -> list[psutil.Process]:
    """Live replica processes of `app` whose deployment name starts with `deployment`
    (`ShardRetriever` matches every shard); with `ancestor`, only its descendants (the
    cluster a process started itself, beside any other on the machine)."""
    prefix = f"ray::ServeReplica:{app}:{deployment}"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].startswith(prefix) and _descends(proc, ancestor):
            found.append(proc)
    return found


def _descends(proc: psutil.Process, ancestor: int | None) -> bool:
    if ancestor is None:
        return True
    try:
        return any(p.pid == ancestor for p in proc.parents())
    except psutil.Error:
        return False


def _engine_processes(app: str, ancestor: int | None) -> list[psutil.Process]:
    engines = []
    for replica in replica_processes(app, "Reranker", ancestor):
        try:
            children = replica.children(recursive=True)
        except psutil.Error:
            continue
        for child in children:
            try:
                if child.cmdline()[:1] == [_ENGINE_TITLE] or child.name() == _ENGINE_TITLE:
                    engines.append(child)
            except psutil.Error:
                continue
    return engines


class ReplicaKiller:
    """`killer(target)` SIGKILLs one process of `target` (a deployment name prefix, or
    `ENGINE`) and says which; `LookupError` when none runs on this node. `ancestor`
    limits it to the descendants of that process (see `replica_processes`)."""

    def __init__(self, app: str = "llmrec", seed: int = 0, ancestor: int | None = None) -> None:
        self.app = app
        self.rng = random.Random(seed)
        self.ancestor = ancestor

    def __call__(self, target: str) -> str:
        if target == ENGINE:
            procs = _engine_processes(self.app, self.ancestor)
        else:
            procs = replica_processes(self.app, target, self.ancestor)
        if not procs:
            raise LookupError(f"no {target} process of app {self.app!r} on this node")
        proc = self.rng.choice(sorted(procs, key=lambda p: p.pid))
        try:
            title = " ".join(proc.cmdline()[:1]) or proc.name()
            os.kill(proc.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError) as exc:
            raise LookupError(f"{target} process {proc.pid} went away first") from exc
        return f"{title.removeprefix('ray::')} (pid {proc.pid})"
