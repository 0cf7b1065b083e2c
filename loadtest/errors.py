"""Errors of the load tester; both are ValueErrors so the CLI reports them as bad input."""

from __future__ import annotations

__all__ = ["LoadtestError", "TargetRefused"]


class LoadtestError(ValueError):
    """A scenario, sweep spec or data folder is unusable; the message names what to change."""


class TargetRefused(LoadtestError):
    """The target URL is not on this machine and `--allow-host` does not name its host."""
