"""llmrec's own log lines in each replica's Serve log.

Serve writes its replicas' logs (`logs/serve/replica_<app>_<deployment>_*.log`
in the Ray session folder, with the replica and request ids) through the
handlers of the `ray.serve` logger. `replica_logging` gives llmrec's loggers
(`deployments.*`, `retrieval.*`) the same handlers at INFO, so what the code
logs (warm-up reports, flagged items, erased users, backend failures) lands
beside Serve's own lines instead of being dropped.
"""

from __future__ import annotations

import logging

__all__ = ["replica_logging"]

APP_LOGGERS = ("deployments", "retrieval")


def replica_logging(level: int = logging.INFO) -> None:
    """Route llmrec's loggers to the replica's Serve log handlers (idempotent)."""
    serve_handlers = logging.getLogger("ray.serve").handlers
    for name in APP_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in serve_handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.propagate = not serve_handlers  # outside Serve: the root logger's handlers
