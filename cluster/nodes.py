"""Several Ray nodes on this machine, and where Serve placed each replica.

`LocalCluster` is a real multi-node Ray cluster on one machine: a head
(`local.start_head` on ports of its own) and worker nodes that join it with
`ray start --address`, each with its own ports, CPUs and custom resources
(the shard nodes declare `placement.SHARD_RESOURCE`, so the retriever
replicas go there). `WorkerNode.kill()` ends a worker the way a lost
machine does: SIGKILL to its raylet and every process under it, with no
chance to clean up. Token auth is on as for `llmrec up` (`local._ray_env`).

`replica_placement(dashboard)` reads Serve's own view of every replica
(the Serve REST API: state, node id, node IP, pid) and joins it with
`ray list nodes`, so `llmrec status --placement` can say which node runs
what on any cluster.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from cluster import local
from cluster.bench.driver import free_port

__all__ = ["LocalCluster", "WorkerNode", "dashboard_headers", "list_nodes", "replica_placement"]


@dataclass
class WorkerNode:
    """One `ray start --address` of this machine: its name, ports, resources and node id."""

    name: str
    node_manager_port: int
    num_cpus: int
    resources: dict[str, float]
    node_id: str = ""

    def raylet(self) -> psutil.Process | None:
        """The node's raylet (it names its own node manager port), or None when it is gone."""
        flag = f"--node_manager_port={self.node_manager_port}"
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if flag in (proc.info["cmdline"] or []):
                    return proc
        return None

    def kill(self) -> str:
        """SIGKILL the raylet and every process under it (its agents and workers, the
        replicas among them). Returns what was killed."""
        raylet = self.raylet()
        if raylet is None:
            raise LookupError(f"{self.name} is not running")
        procs = [raylet]
        with contextlib.suppress(psutil.Error):
            procs += raylet.children(recursive=True)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)
        return f"{self.name} (node {self.node_id[:8]}, {len(procs)} processes)"


def worker_command(address: str, node: WorkerNode, **ports: int) -> list[str]:
    """`ray start --address` for `node`, every port of its own (`ports`: the flag names with
    underscores, e.g. object_manager_port=...); no log monitor (the head's streams logs)."""
    flags = {"node_manager_port": node.node_manager_port, **ports}
    return [
        local._bin("ray"),
        "start",
        f"--address={address}",
        f"--num-cpus={node.num_cpus}",
        f"--resources={json.dumps(node.resources)}",
        *(f"--{k.replace('_', '-')}={v}" for k, v in flags.items()),
        "--include-log-monitor=False",
        "--disable-usage-stats",
    ]


@dataclass
class LocalCluster:
    """A head and worker nodes on this machine (module docstring). Use as a context manager;
    leaving it kills the workers and stops the head."""

    head_cpus: int = 1
    head_resources: dict[str, float] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    workers: list[WorkerNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The GCS address workers and drivers join."""
        return f"127.0.0.1:{self.ports['port']}"

    @property
    def dashboard(self) -> str:
        """The dashboard URL (`serve deploy --address`, the Serve REST API)."""
        return f"http://127.0.0.1:{self.ports['dashboard_port']}"

    def start(self) -> LocalCluster:
        self.ports = {
            "port": free_port(),
            "dashboard_port": free_port(),
            "metrics_port": free_port(),
            "client_port": free_port(),
        }
        local.start_head(num_cpus=self.head_cpus, resources=self.head_resources, **self.ports)
        return self

    def add_worker(
        self, name: str, *, num_cpus: int = 1, resources: dict[str, float] | None = None
    ) -> WorkerNode:
        """Start a worker node that joins the head; returns once Ray lists it as ALIVE."""
        node = WorkerNode(name, free_port(), num_cpus, dict(resources or {}))
        ports = {
            k: free_port()
            for k in (
                "object_manager_port",
                "metrics_export_port",
                "dashboard_agent_listen_port",
                "dashboard_agent_grpc_port",
                "runtime_env_agent_port",
            )
        }
        local._run(worker_command(self.address, node, **ports), extra_env=local.RAY_START_ENV)
        raylet = node.raylet()
        if raylet is None:
            raise local.ClusterError(f"`ray start` returned but {name}'s raylet is not running")
        for arg in raylet.cmdline():
            if arg.startswith("--node_id="):
                node.node_id = arg.partition("=")[2]
        self._wait_alive(node)
        self.workers.append(node)
        return node

    def _wait_alive(self, node: WorkerNode, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(n["node_id"] == node.node_id and n["state"] == "ALIVE" for n in self.nodes()):
                return
            time.sleep(0.5)
        raise local.ClusterError(f"{node.name} did not join {self.address} in {timeout_s:.0f}s")

    def nodes(self) -> list[dict[str, Any]]:
        return list_nodes(self.address)

    def stop(self) -> None:
        for node in self.workers:
            with contextlib.suppress(LookupError):
                node.kill()
        local.stop_head(self.ports["port"])

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def list_nodes(address: str) -> list[dict[str, Any]]:
    """`ray list nodes` of the cluster at `address` (GCS host:port): id, state, resources."""
    proc = local._run(
        [local._bin("ray"), "list", "nodes", "--address", address, "--format", "json"],
        check=False,
    )
    if proc.returncode != 0:
        return []
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return []


def dashboard_headers() -> dict[str, str]:
    """The bearer token the dashboard's REST APIs need when token auth is on, else none."""
    env = local._ray_env()
    if env.get("RAY_AUTH_MODE") != "token":
        return {}
    token = env.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(env.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser()
        token = path.read_text().strip()
    return {"authorization": f"Bearer {token}"}


def replica_placement(dashboard: str, address: str, app: str = "llmrec") -> list[dict[str, Any]]:
    """Every replica of `app` as Serve reports it, with the node it runs on: dicts of
    deployment, replica id, state, node id, node IP, pid and the node's custom resources
    (`address`: the GCS host:port, for `ray list nodes`)."""
    try:
        r = httpx.get(
            f"{dashboard}/api/serve/applications/", headers=dashboard_headers(), timeout=30
        )
        r.raise_for_status()
    except httpx.HTTPError as exc:
        raise local.ClusterError(
            f"the Serve REST API at {dashboard} did not answer: {exc}"
        ) from exc
    nodes = {n["node_id"]: n for n in list_nodes(address)}
    rows = []
    details = (r.json().get("applications") or {}).get(app) or {}
    for name, deployment in sorted((details.get("deployments") or {}).items()):
        for replica in deployment.get("replicas") or []:
            node = nodes.get(replica.get("node_id") or "", {})
            rows.append(
                {
                    "deployment": name,
                    "replica": replica.get("replica_id"),
                    "state": replica.get("state"),
                    "node_id": replica.get("node_id"),
                    "node_ip": replica.get("node_ip"),
                    "head": bool(node.get("is_head_node")),
                    "pid": replica.get("pid"),
                    "node_resources": _custom_resources(node.get("resources_total") or {}),
                }
            )
    return rows


def _custom_resources(total: dict[str, Any]) -> dict[str, float]:
    """A node's resources less Ray's own (CPU, GPU, memory, object store, node:*)."""
    skip = {"CPU", "GPU", "memory", "object_store_memory"}
    return {
        k: float(v)
        for k, v in total.items()
        if k not in skip and not k.startswith("node:") and not isinstance(v, str)
    }
