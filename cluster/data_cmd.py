"""`llmrec data push LOCAL URI`: upload a data dir `llmrec build` wrote to shared storage.

Every node then serves it with `data_dir: URI`, each from its own verified copy
(retrieval/artifacts.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from retrieval.artifacts import push_data_dir, redacted
from retrieval.integrity import IndexIntegrityError

__all__ = ["register"]

console = Console()


def cmd_push(args: argparse.Namespace) -> int:
    try:
        sent = push_data_dir(Path(args.local), args.uri)
    except IndexIntegrityError as exc:  # no built index in LOCAL
        console.print(f"[red]error:[/] {exc}")
        return 2
    console.print(f"uploaded {len(sent)} files to {redacted(args.uri)}", highlight=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `llmrec data push` to the CLI."""
    s = subparsers.add_parser("data", help="data dirs on shared storage")
    sub = s.add_subparsers(dest="data", required=True)
    s = sub.add_parser(
        "push",
        help="upload a built data dir (catalog, interactions, index/) to a storage URI",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("local", help="the data dir (`llmrec build --data LOCAL`)")
    s.add_argument(
        "uri", help="where to: s3://bucket/prefix[?endpoint_override=host:port&scheme=http], …"
    )
    s.set_defaults(func=cmd_push)
