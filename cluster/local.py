"""Starting, deploying to and stopping a Ray cluster from the CLI.

`up` starts a local Ray head (or joins `address`), writes the Serve config
with its `args` resolved to absolute paths, runs `serve deploy` and waits
until `GET /v1/health` says ready. `down` shuts Serve down and stops the
local head. Everything goes through Ray's own CLIs so the cluster outlives
the `llmrec` process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from retrieval.config import PROJECT_ROOT, AppConfig, is_uri, resolve_path
from retrieval.privacy import ensure_secret_file

__all__ = [
    "DEFAULT_CONFIG",
    "RUN_DIR",
    "ClusterError",
    "cluster_resources",
    "down",
    "head_command",
    "health",
    "load_serve_config",
    "render_serve_config",
    "replicas_running",
    "serve_app_configs",
    "serve_status",
    "start_head",
    "stop_head",
    "up",
]

DEFAULT_CONFIG = PROJECT_ROOT / "ray_config.yaml"
RUN_DIR = Path("~/.cache/llmrec/run").expanduser()
DASHBOARD_PORT = 8265
DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"
# The head `up` starts listens on this GCS port. Ray's CLIs are always pointed at it (and
# `down` stops only its processes): on a shared machine other local Ray instances (for
# example tests' `ray.init()`) exist, and `ray status`/`ray stop` would otherwise find
# or end those too.
HEAD_PORT = 6379
METRICS_PORT = 8080
"""Where the local head exports Prometheus metrics (Serve's and llmrec's): scrape
http://127.0.0.1:8080/metrics."""
HEAD_ADDRESS = f"127.0.0.1:{HEAD_PORT}"

# Environment of `ray start` (a variable already set in the caller's environment wins):
# Serve's high-throughput mode (HAProxy HTTP ingress straight to the ingress replicas, gRPC
# between replicas), replicas at normal CPU priority (Ray nices its workers to 15 by
# default, which starves them next to any other busy process), and Serve's controller
# looping every 0.5 s instead of 0.1 s (idle, it used 5.6% of a core on a 2-core machine,
# 1.9% at 0.5 s; a deploy or a dead replica is acted on up to 0.4 s later). See README,
# "Using it".
RAY_START_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_worker_niceness": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}


class ClusterError(RuntimeError):
    """Starting, deploying or reaching the cluster failed; the message says what to do."""


def _bin(name: str) -> str:
    """A console script from this Python's environment (the venv's `ray`, `serve`)."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise ClusterError(f"`{name}` not found; run `make setup`")
    return found


def ensure_auth_token(path: Path) -> Path:
    """Ray's auth token file: made once and kept readable by its owner only (a token that
    exists already is kept, since other Ray tools on this machine use it)."""
    return ensure_secret_file(path)


def _ray_env() -> dict[str, str]:
    """The environment for Ray's CLIs: token auth on, for the head and every client of it.

    Unless the caller chose an auth mode, the head `up` starts requires the token of
    `RAY_AUTH_TOKEN` or of the token file (made here when missing, mode 600), and
    `ray status` and `serve` send it (they do only with RAY_AUTH_MODE=token).
    """
    env = dict(os.environ)
    if "RAY_AUTH_MODE" not in env:
        env["RAY_AUTH_MODE"] = "token"
    if env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in env:
        ensure_auth_token(Path(env.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser())
    return env


def _run(
    cmd: list[str], *, check: bool = True, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = _ray_env()
    for key, value in (extra_env or {}).items():
        env.setdefault(key, value)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip() or proc.stdout}")
    return proc


def load_serve_config(path: Path) -> dict[str, Any]:
    with Path(path).open() as f:
        return yaml.safe_load(f)


def render_serve_config(
    path: Path,
    *,
    data_dir: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    serve_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], AppConfig]:
    """The Serve config at `path` with the llmrec app's args validated and made absolute.

    `overrides` are merged into the app's args, `serve_overrides` into the Serve config's own
    top-level keys (`http_options`, `proxy_location`); nested dicts merge key by key.
    Returns the config dict and the validated AppConfig.
    """
    config = merge_overrides(load_serve_config(path), serve_overrides or {})
    app = config["applications"][0]
    args = merge_overrides(app.get("args") or {}, overrides or {})
    if data_dir is not None:
        args["data_dir"] = str(data_dir) if is_uri(data_dir) else str(Path(data_dir).resolve())
    cfg = AppConfig.model_validate(args)
    args["data_dir"] = cfg.data_source  # a URI stays as given: each node mirrors it
    args["models_dir"] = str(resolve_path(cfg.models_dir))
    app["args"] = args
    return config, cfg


def merge_overrides(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, nested sections merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_overrides(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _http_url(config: dict[str, Any]) -> str:
    port = (config.get("http_options") or {}).get("port", 8000)
    return f"http://127.0.0.1:{port}"


def health(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    """`GET /v1/health`: (status code, body); (0, {}) when nothing answers."""
    try:
        r = httpx.get(f"{url}/v1/health", timeout=timeout)
        return r.status_code, r.json()
    except (httpx.HTTPError, ValueError):
        return 0, {}


def _ray_running() -> bool:
    return _run([_bin("ray"), "status", "--address", HEAD_ADDRESS], check=False).returncode == 0


def _head_session(port: int = HEAD_PORT) -> str | None:
    """Session folder of the local head whose GCS is on `port`; None when it is not running."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if f"--gcs_server_port={port}" in cmd:
            for arg in cmd:
                if arg.startswith("--session-dir="):
                    return arg.partition("=")[2]
    return None


def _head_processes(port: int = HEAD_PORT) -> list:
    """The head's processes (those naming its session or GCS address) and their descendants."""
    import psutil

    session = _head_session(port)
    if session is None:
        return []
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(session in a or a.endswith(f":{port}") for a in cmd):
            with contextlib.suppress(psutil.Error):
                for p in [proc, *proc.children(recursive=True)]:
                    found[p.pid] = p
    return list(found.values())


def _dashboard_is_ours(url: str = DASHBOARD) -> bool:
    """Whether the process listening at `url` is the local head's dashboard (not another's)."""
    import psutil

    session = _head_session()
    port = httpx.URL(url).port
    if session is None or port is None:
        return False
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            with contextlib.suppress(psutil.Error):
                return any(session in a for a in psutil.Process(conn.pid).cmdline())
    return False


def cluster_resources() -> dict[str, float] | None:
    """Logical CPU/GPU totals of the running Ray cluster (from `ray status`); None if none runs."""
    proc = _run([_bin("ray"), "status", "--address", HEAD_ADDRESS], check=False)
    if proc.returncode != 0:
        return None
    totals: dict[str, float] = {}
    for _, total, name in re.findall(r"([\d.]+)/([\d.]+)\s+(CPU|GPU)\b", proc.stdout):
        totals.setdefault(name, float(total))
    return totals


def serve_status(address: str = DASHBOARD) -> dict[str, Any] | None:
    """`serve status` as a dict (applications, their deployments' replica states); None if down."""
    proc = _run([_bin("serve"), "status", "--address", address], check=False)
    if proc.returncode != 0:
        return None
    try:
        return yaml.safe_load(proc.stdout) or {}
    except yaml.YAMLError:
        return None


def app_details(status: dict[str, Any] | None, app: str) -> dict[str, Any] | None:
    """The entry of `app` in a `serve status` dict; None if the app is absent."""
    return ((status or {}).get("applications") or {}).get(app)


def replicas_running(status: dict[str, Any] | None, app: str) -> dict[str, int] | None:
    """RUNNING replicas per deployment of `app` in a `serve status` dict (`serve_status`, or
    `dataclasses.asdict(serve.status())` in a Serve driver); None if the app is absent."""
    details = app_details(status, app)
    if details is None:
        return None
    return {
        name: int((d.get("replica_states") or {}).get("RUNNING", 0))
        for name, d in sorted((details.get("deployments") or {}).items())
    }


def app_status(status: dict[str, Any] | None, app: str) -> str | None:
    """The status of `app` (RUNNING, DEPLOYING, DEPLOY_FAILED, ...) in a `serve status` dict."""
    details = app_details(status, app)
    return None if details is None else details.get("status")


def serve_app_configs(address: str = DASHBOARD) -> list[dict[str, Any]]:
    """The application configs Serve was last deployed with (`serve config`); [] if none."""
    proc = _run([_bin("serve"), "config", "--address", address], check=False)
    if proc.returncode != 0:
        return []
    try:
        return [c for c in yaml.safe_load_all(proc.stdout) if isinstance(c, dict) and c.get("name")]
    except yaml.YAMLError:
        return []


def _dashboard_answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/api/version", timeout=5.0)  # any answer, even 401, means it is up
        return True
    except httpx.HTTPError:
        return False


def _wait_for_dashboard(url: str, timeout_s: float = 120.0) -> None:
    """`ray start` returns before the dashboard (which serves `serve deploy`) listens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _dashboard_answers(url):
            return
        time.sleep(1.0)
    raise ClusterError(
        f"the Ray dashboard at {url} did not answer within {timeout_s:.0f}s;"
        " see /tmp/ray/session_latest/logs/dashboard.log"
    )


CLUSTER_GONE_CHECKS = 3
"""`up` gives up after this many health checks (2 s apart) in which the Ray cluster is gone."""


def up(
    config_path: Path = DEFAULT_CONFIG,
    *,
    data_dir: Path | str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    overrides: dict[str, Any] | None = None,
    serve_overrides: dict[str, Any] | None = None,
    timeout_s: float = 600.0,
    on_wait=None,
) -> str:
    """Start or join Ray, deploy the app, wait for health; returns the HTTP base URL.
    `overrides` and `serve_overrides`: as for `render_serve_config`."""
    config, cfg = render_serve_config(
        config_path, data_dir=data_dir, overrides=overrides, serve_overrides=serve_overrides
    )
    if is_uri(cfg.data_dir):
        from retrieval.artifacts import manifest_of

        manifest_of(cfg.data_dir)  # the storage answers and holds an index, without a copy here
    elif not (cfg.index_path / "manifest.json").exists():
        raise ClusterError(f"{cfg.index_path}: no index; run `llmrec build --data {cfg.data_path}`")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    rendered = RUN_DIR / "serve_config.yaml"
    rendered.write_text(yaml.safe_dump(config, sort_keys=False))
    dashboard = DASHBOARD
    if address:
        dashboard = address if address.startswith("http") else f"http://{address}"
    elif not _ray_running():
        start_head(num_cpus=num_cpus)
    if not address and not _dashboard_is_ours(dashboard):
        raise ClusterError(
            f"{dashboard} is not the dashboard of the local Ray head (another Ray instance on "
            "this machine holds the port); stop it or pass --address"
        )
    _run([_bin("serve"), "deploy", str(rendered), "--address", dashboard])
    url = _http_url(config)
    app = config["applications"][0]["name"]
    deadline = time.monotonic() + timeout_s
    silent = 0  # consecutive checks with neither the app nor the cluster answering
    while time.monotonic() < deadline:
        status, body = health(url)
        # While an update rolls out the old replicas still answer /v1/health: ready is
        # when Serve also says the new version runs.
        if status == 200:
            state = app_status(serve_status(dashboard), app)
            if state == "RUNNING":
                return url
            if state == "DEPLOY_FAILED":
                raise ClusterError(
                    f"Serve could not deploy {app!r}; see `serve status` and "
                    "/tmp/ray/session_latest/logs/serve/"
                )
        silent = silent + 1 if status == 0 and not _dashboard_answers(dashboard) else 0
        if silent >= CLUSTER_GONE_CHECKS:
            raise ClusterError(
                f"the Ray cluster at {dashboard} stopped answering while the app was starting "
                "(was it stopped, e.g. by `llmrec down`?); start it again with `llmrec up`"
            )
        if on_wait:
            on_wait(status, body)
        time.sleep(2.0)
    raise ClusterError(
        f"{url}/v1/health not ready after {timeout_s:.0f}s: {body or 'no answer'};"
        " see `serve status` and /tmp/ray/session_latest/logs/serve/"
    )


def down(*, stop_ray: bool = True) -> None:
    """Shut Serve down and stop the local Ray head (both idempotent).

    Only the head's own processes are ended (by pid), never other Ray instances.
    """
    if _ray_running() and _dashboard_is_ours():
        _run([_bin("serve"), "shutdown", "-y", "--address", DASHBOARD], check=False)
    if stop_ray:
        stop_head()


def head_command(
    *,
    port: int = HEAD_PORT,
    dashboard_port: int = DASHBOARD_PORT,
    metrics_port: int = METRICS_PORT,
    client_port: int = 10001,
    num_cpus: int | None = None,
    resources: dict[str, float] | None = None,
) -> list[str]:
    """`ray start --head` as `up` runs it: the dashboard (and with it the Jobs and Serve REST
    APIs) on 127.0.0.1 only; token auth comes from the environment (`_ray_env`).
    `resources`: custom resources the head declares (`ray start --resources`)."""
    extra = [f"--resources={json.dumps(resources)}"] if resources else []
    return [
        _bin("ray"),
        "start",
        "--head",
        f"--port={port}",
        f"--dashboard-port={dashboard_port}",
        f"--metrics-export-port={metrics_port}",
        f"--ray-client-server-port={client_port}",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        f"--num-cpus={num_cpus or os.cpu_count() or 2}",
        *extra,
    ]


def start_head(**options: Any) -> None:
    """Start a local head with token auth (`head_command(**options)`); wait for its dashboard."""
    _run(head_command(**options), extra_env=RAY_START_ENV)
    _wait_for_dashboard(f"http://127.0.0.1:{options.get('dashboard_port', DASHBOARD_PORT)}")


def stop_head(port: int = HEAD_PORT) -> None:
    """End the processes of the local head whose GCS is on `port` (by pid; other Ray
    instances on the machine keep running)."""
    import psutil

    procs = _head_processes(port)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    current = Path("/tmp/ray/ray_current_cluster")  # what `ray stop` would also remove
    with contextlib.suppress(OSError):
        if current.read_text().strip().endswith(f":{port}"):
            current.unlink()
