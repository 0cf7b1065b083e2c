"""Starting, deploying to and stopping a Ray cluster from the CLI.

`up` starts a local Ray head (or joins `address`), writes the Serve config
with its `args` resolved to absolute paths, runs `serve deploy` and waits
until `GET /v1/health` says ready. `down` shuts Serve down and stops the
local head. Everything goes through Ray's own CLIs so the cluster outlives
the `llmrec` process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments.config import PROJECT_ROOT, AppConfig, resolve_path

__all__ = [
    "DEFAULT_CONFIG",
    "RUN_DIR",
    "ClusterError",
    "down",
    "health",
    "load_serve_config",
    "render_serve_config",
    "up",
]

DEFAULT_CONFIG = PROJECT_ROOT / "ray_config.yaml"
RUN_DIR = Path("~/.cache/llmrec/run").expanduser()
DASHBOARD = "http://127.0.0.1:8265"


class ClusterError(RuntimeError):
    """Starting, deploying or reaching the cluster failed; the message says what to do."""


def _bin(name: str) -> str:
    """A console script from this Python's environment (the venv's `ray`, `serve`)."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise ClusterError(f"`{name}` not found; run `make setup`")
    return found


def _run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip() or proc.stdout}")
    return proc


def load_serve_config(path: Path) -> dict[str, Any]:
    with Path(path).open() as f:
        return yaml.safe_load(f)


def render_serve_config(
    path: Path, *, data_dir: Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], AppConfig]:
    """The Serve config at `path` with the llmrec app's args validated and made absolute.

    `overrides` are merged into the app's args (nested dicts merge key by key).
    Returns the config dict and the validated AppConfig.
    """
    config = load_serve_config(path)
    app = config["applications"][0]
    args = _merge(app.get("args") or {}, overrides or {})
    if data_dir is not None:
        args["data_dir"] = str(Path(data_dir).resolve())
    cfg = AppConfig.model_validate(args)
    args["data_dir"] = str(cfg.data_path)
    args["models_dir"] = str(resolve_path(cfg.models_dir))
    app["args"] = args
    return config, cfg


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
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
    return _run([_bin("ray"), "status"], check=False).returncode == 0


def up(
    config_path: Path = DEFAULT_CONFIG,
    *,
    data_dir: Path | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    overrides: dict[str, Any] | None = None,
    timeout_s: float = 600.0,
    on_wait=None,
) -> str:
    """Start or join Ray, deploy the app, wait for health; returns the HTTP base URL."""
    config, cfg = render_serve_config(config_path, data_dir=data_dir, overrides=overrides)
    if not (cfg.index_path / "manifest.json").exists():
        raise ClusterError(f"{cfg.index_path}: no index; run `llmrec build --data {cfg.data_path}`")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    rendered = RUN_DIR / "serve_config.yaml"
    rendered.write_text(yaml.safe_dump(config, sort_keys=False))
    dashboard = DASHBOARD
    if address:
        dashboard = address if address.startswith("http") else f"http://{address}"
    elif not _ray_running():
        cmd = [
            _bin("ray"),
            "start",
            "--head",
            "--disable-usage-stats",
            "--dashboard-host",
            "127.0.0.1",
            f"--num-cpus={num_cpus or os.cpu_count() or 2}",
        ]
        _run(cmd)
    _run([_bin("serve"), "deploy", str(rendered), "--address", dashboard])
    url = _http_url(config)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = health(url)
        if status == 200:
            return url
        if on_wait:
            on_wait(status, body)
        time.sleep(2.0)
    raise ClusterError(
        f"{url}/v1/health not ready after {timeout_s:.0f}s: {body or 'no answer'};"
        " see `serve status` and /tmp/ray/session_latest/logs/serve/"
    )


def down(*, stop_ray: bool = True) -> None:
    """Shut Serve down and stop the local Ray head (both idempotent)."""
    if _ray_running():
        _run([_bin("serve"), "shutdown", "-y", "--address", DASHBOARD], check=False)
    if stop_ray:
        _run([_bin("ray"), "stop", "--force"], check=False)
