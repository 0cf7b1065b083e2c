"""Keep what a replica loaded out of the garbage collector's full passes.

A router or retriever replica holds hundreds of thousands of long-lived Python
objects: the models' id indexes, the shards' rows, the stored histories. Every
full collection walks all of them; on the demo's router that is a 100-200 ms
pause with the event loop stopped, a few times a minute under load, and each
request in work waits it out. `gc.freeze` moves the objects alive now to a
permanent generation the collector skips; requests' own garbage is collected
as before. Objects frozen this way are still freed when nothing refers to them;
only a reference cycle among them would outlive its use, so a replica that
swaps what it loaded calls `settle_heap` again, which first lets the
collector see the old objects once more.
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> int:
    """Collect what is garbage now, then freeze the rest; returns the objects frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
