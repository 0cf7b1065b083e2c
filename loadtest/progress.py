"""Live progress of a run on the terminal (rich): rate, p99 and errors of the last seconds."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadtest.runner import LIVE_WINDOW_S, LiveSnapshot

__all__ = ["LiveProgress"]


class LiveProgress:
    """A context manager whose instances are `progress` hooks for `LoadRunner`."""

    def __init__(self, console: Console | None = None, slo_ms: float | None = None) -> None:
        self.console = console or Console()
        self.slo_ms = slo_ms
        self._live = Live(self._render(None), console=self.console, refresh_per_second=4)

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.update(Text(""))  # leave no half-drawn note behind
        self._live.__exit__(exc_type, exc, tb)

    def __call__(self, snap: LiveSnapshot) -> None:
        self._live.update(self._render(snap))

    def note(self, text: str) -> None:
        """Show a status line instead of the table (between runs, e.g. while deploying)."""
        self._live.update(Text(text, style="cyan"))

    def _render(self, snap: LiveSnapshot | None) -> Table:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("run", "phase", "time", "load", "active", "sent", "rate", "p99", "errors"):
            table.add_column(col)
        if snap is None:
            table.add_row("starting", "", "", "", "", "", "", "", "")
            return table
        load = f"{snap.load:g} users" if snap.mode == "closed" else f"{snap.load:g} rps"
        p99 = f"{snap.p99_ms:.0f} ms"
        if self.slo_ms is not None and snap.p99_ms > self.slo_ms:
            p99 = f"[red]{p99}[/]"
        errors = ", ".join(f"{k}×{v}" for k, v in snap.errors_by_status.items()) or "0"
        table.add_row(
            snap.label or "-",
            snap.phase,
            f"{snap.elapsed_s:.0f}/{snap.total_s:.0f}s",
            load,
            str(snap.active),
            str(snap.sent),
            f"{snap.rps:.1f}/s ({LIVE_WINDOW_S:.0f}s)",
            p99,
            f"[red]{errors}[/]" if snap.errors else errors,
        )
        return table
