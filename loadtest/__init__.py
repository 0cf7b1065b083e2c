"""llmrec load tester: scenarios, closed/open-loop generator, sweeps and reports.

Talks to the service only over HTTP (httpx's API over aiohttp, asyncio).
`cluster/loadtest_cmd.py` wires it to `llmrec loadtest`, where sweeps redeploy
the Serve app per point (`cluster/sweep_deploy.py`).
"""

from loadtest.errors import LoadtestError, TargetRefused
from loadtest.report import build_report, write_report
from loadtest.runner import LoadRunner, RunResult, check_target
from loadtest.scenario import Scenario, TaskSpec, builtin_scenarios, load_scenario
from loadtest.stats import RequestRecord, Summary, percentile, summarize
from loadtest.sweep import Deployed, PointResult, SweepPoint, parse_sweep, run_sweep
from loadtest.traffic import TrafficData

__all__ = [
    "Deployed",
    "LoadRunner",
    "LoadtestError",
    "PointResult",
    "RequestRecord",
    "RunResult",
    "Scenario",
    "Summary",
    "SweepPoint",
    "TargetRefused",
    "TaskSpec",
    "TrafficData",
    "build_report",
    "builtin_scenarios",
    "check_target",
    "load_scenario",
    "parse_sweep",
    "percentile",
    "run_sweep",
    "summarize",
    "write_report",
]
